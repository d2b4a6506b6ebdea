// IDX reading and validation, gzip included; data folder layout; per-epoch shuffling.
#include "cumnist/data.h"

#include "cumnist/file_io.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "cumnist/error.h"
#include "cumnist/philox.h"

namespace cumnist {
namespace {

// Larger inputs are refused before anything is allocated.
constexpr uint64_t kMaxIdxBytes = uint64_t{1} << 31;

uint32_t read_be32(const uint8_t* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

bool is_gzip(const uint8_t* bytes, std::size_t size) { return size >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b; }

std::vector<uint8_t> read_file(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw Error(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
    if (S_ISDIR(st.st_mode)) throw Error(fmt::format("'{}' is a directory, expected an IDX file", path));
    require_regular_input(path, "an IDX file");  // a FIFO would block, /dev/zero pass as empty
    if (static_cast<uint64_t>(st.st_size) > kMaxIdxBytes)
        throw Error(fmt::format("'{}' is {} bytes, larger than the {} bytes supported", path, st.st_size, kMaxIdxBytes));
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
    std::vector<uint8_t> bytes(static_cast<std::size_t>(st.st_size));
    if (!bytes.empty() && !in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size())))
        throw Error(fmt::format("cannot read '{}'", path));
    return bytes;
}

// Inflates gzip data (one or more concatenated members) into at most `limit` bytes, growing the
// output as data actually arrives: a forged size field or header never causes a large allocation.
// Returns the bytes, or throws on corrupt or truncated data; `*overflow` is set when the stream
// holds more than `limit` bytes.
std::vector<uint8_t> gunzip_bounded(const std::string& name, const uint8_t* bytes, std::size_t size, std::size_t limit,
                                    bool* overflow) {
    std::vector<uint8_t> out;
    z_stream zs{};
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw Error(fmt::format("'{}': cannot initialise zlib", name));
    zs.next_in = const_cast<Bytef*>(bytes);
    zs.avail_in = static_cast<uInt>(size);
    *overflow = false;
    int rc = Z_OK;
    constexpr std::size_t kChunk = std::size_t{1} << 20;
    while (true) {
        if (out.size() > limit) {
            *overflow = true;
            break;
        }
        const std::size_t used = out.size();
        out.resize(std::min(limit + 1, used + kChunk));
        zs.next_out = out.data() + used;
        zs.avail_out = static_cast<uInt>(out.size() - used);
        rc = inflate(&zs, Z_NO_FLUSH);
        out.resize(out.size() - zs.avail_out);
        if (rc == Z_STREAM_END) {
            if (zs.avail_in == 0) break;
            if (inflateReset(&zs) != Z_OK) break;  // another gzip member follows
            continue;
        }
        if (rc == Z_BUF_ERROR && zs.avail_in == 0) break;  // input exhausted before the stream's end
        if (rc != Z_OK && rc != Z_BUF_ERROR) break;
    }
    const char* msg = zs.msg;
    const std::string detail = msg ? msg : "inflate failed";
    inflateEnd(&zs);
    if (*overflow) return out;
    if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT || rc == Z_MEM_ERROR || rc == Z_STREAM_ERROR)
        throw Error(fmt::format("'{}': corrupt gzip data ({})", name, detail));
    if (rc != Z_STREAM_END) throw Error(fmt::format("'{}': truncated: the gzip stream ends early", name));
    return out;
}

}  // namespace

namespace {
// Checks the IDX header at the start of `bytes` and returns the dimensions it declares.
std::vector<uint32_t> parse_idx_header(const std::string& name, const uint8_t* bytes, std::size_t size,
                                       int expected_rank) {
    const std::size_t header_size = 4 + 4 * static_cast<std::size_t>(expected_rank);
    if (size < 4) throw Error(fmt::format("'{}': truncated: {} bytes, no IDX header", name, size));
    if (bytes[0] != 0 || bytes[1] != 0)
        throw Error(fmt::format("'{}': not an IDX file (magic {:02x}{:02x}{:02x}{:02x}, expected 0000080{})", name,
                                bytes[0], bytes[1], bytes[2], bytes[3], expected_rank));
    if (bytes[2] != 0x08)
        throw Error(fmt::format("'{}': IDX element type 0x{:02x}, expected 0x08 (unsigned byte)", name, bytes[2]));
    if (bytes[3] != expected_rank)
        throw Error(fmt::format("'{}': IDX file has {} dimensions, expected {}", name, bytes[3], expected_rank));
    if (size < header_size)
        throw Error(fmt::format("'{}': truncated: the IDX header needs {} bytes, found {}", name, header_size, size));
    std::vector<uint32_t> dims;
    uint64_t count = 1;
    for (int d = 0; d < expected_rank; ++d) {
        dims.push_back(read_be32(bytes + 4 + 4 * d));
        count *= dims.back();
        if (count > kMaxIdxBytes)
            throw Error(fmt::format("'{}': header dimensions claim more than {} bytes of data", name, kMaxIdxBytes));
    }
    return dims;
}
}  // namespace

IdxArray parse_idx(const std::string& name, const uint8_t* bytes, std::size_t size, int expected_rank) {
    CUMNIST_CHECK(expected_rank >= 1 && expected_rank <= 4, "IDX rank {} is not supported", expected_rank);
    if (size == 0) throw Error(fmt::format("'{}' is empty, expected an IDX file", name));
    const std::size_t header_size = 4 + 4 * static_cast<std::size_t>(expected_rank);
    const bool gz = is_gzip(bytes, size);

    IdxArray out;
    std::vector<uint8_t> inflated;
    bool overflow = false;
    if (gz) {
        // Inflate the header alone, then at most the size it declares (plus one byte to detect
        // excess); the output grows only as data arrives, so a forged header or gzip size field
        // never causes a large allocation.
        bool more = false;
        const std::vector<uint8_t> head = gunzip_bounded(name, bytes, size, header_size, &more);
        if (head.empty()) throw Error(fmt::format("'{}': truncated: no IDX header", name));
        out.dims = parse_idx_header(name, head.data(), head.size(), expected_rank);
    } else {
        out.dims = parse_idx_header(name, bytes, size, expected_rank);
    }
    uint64_t count = 1;
    for (uint32_t d : out.dims) count *= d;
    const uint64_t total = header_size + count;
    if (gz) {
        inflated = gunzip_bounded(name, bytes, size, static_cast<std::size_t>(total), &overflow);
        bytes = inflated.data();
        size = inflated.size();
    }
    const char* where = gz ? "the gzip file" : "the file";
    if (overflow)
        throw Error(fmt::format("'{}': the header promises {} bytes of data, {} holds more", name, count, where));
    if (size != total)
        throw Error(fmt::format("'{}': the header promises {} bytes of data, {} holds {}{}", name, count, where,
                                size - header_size, size < total ? " (truncated)" : ""));
    out.data.assign(bytes + header_size, bytes + size);
    return out;
}

IdxArray read_idx(const std::string& path, int expected_rank) {
    const std::vector<uint8_t> bytes = read_file(path);
    return parse_idx(path, bytes.data(), bytes.size(), expected_rank);
}

Dataset load_idx_pair(const std::string& images_path, const std::string& labels_path, int classes) {
    IdxArray images = read_idx(images_path, 3);
    IdxArray labels = read_idx(labels_path, 1);
    if (images.dims[0] != labels.dims[0])
        throw Error(fmt::format("'{}' holds {} images but '{}' holds {} labels", images_path, images.dims[0],
                                labels_path, labels.dims[0]));
    if (images.dims[0] == 0) throw Error(fmt::format("'{}' holds no images", images_path));
    if (images.dims[1] == 0 || images.dims[2] == 0 || images.dims[1] > 4096 || images.dims[2] > 4096)
        throw Error(fmt::format("'{}': image size {}x{} is not supported", images_path, images.dims[1], images.dims[2]));
    for (std::size_t i = 0; i < labels.data.size(); ++i)
        if (labels.data[i] >= classes)
            throw Error(fmt::format("'{}': label {} at index {} is out of range [0, {})", labels_path, labels.data[i], i,
                                    classes));
    Dataset ds;
    ds.name = images_path;
    ds.n = static_cast<int>(images.dims[0]);
    ds.rows = static_cast<int>(images.dims[1]);
    ds.cols = static_cast<int>(images.dims[2]);
    ds.images = std::move(images.data);
    ds.labels = std::move(labels.data);
    return ds;
}

namespace {
bool file_exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

bool is_folder(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string fetch_hint(const std::string& dataset) {
    return fmt::format("run scripts/fetch_data.sh {} to download it, or pass --data DIR", dataset);
}

std::string find_idx(const std::string& dir, const std::string& base, const std::string& dataset) {
    for (const std::string& candidate : {dir + "/" + base, dir + "/" + base + ".gz"})
        if (file_exists(candidate)) return candidate;
    throw Error(fmt::format("missing data: no '{}' (or .gz) in '{}'; {}", base, dir, fetch_hint(dataset)));
}

// A folder holds a data set when any of its four files is there; a missing one is then named by
// find_idx rather than sending the user to look elsewhere.
bool holds_dataset(const std::string& dir) {
    for (const char* base : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                             "t10k-labels-idx1-ubyte"})
        if (file_exists(dir + "/" + base) || file_exists(dir + "/" + base + ".gz")) return true;
    return false;
}
}  // namespace

std::string dataset_folder(const std::string& data_dir, const std::string& dataset) {
    if (dataset != "mnist" && dataset != "fashion")
        throw Error(fmt::format("unknown dataset '{}' (expected mnist or fashion)", dataset));
    const std::string nested = data_dir + "/" + dataset;
    if (is_folder(nested) && holds_dataset(nested)) return nested;
    if (is_folder(data_dir) && holds_dataset(data_dir)) {
        // A folder named after the other data set holds that one's files: training or evaluating on
        // them under this data set's name would mislabel the model and its classes.
        std::string name = data_dir;
        while (name.size() > 1 && name.back() == '/') name.pop_back();
        name = name.substr(name.find_last_of('/') == std::string::npos ? 0 : name.find_last_of('/') + 1);
        for (const char* other : {"mnist", "fashion"})
            if (name == other && name != dataset)
                throw Error(fmt::format("--data '{}' holds the {} data set, not {}; pass --dataset {} (or --data at the "
                                        "{} files)",
                                        data_dir, other, dataset, other, dataset));
        return data_dir;
    }
    const std::string fetch = fetch_hint(dataset);
    struct stat st {};
    if (::stat(data_dir.c_str(), &st) != 0)
        throw Error(fmt::format("missing data: the data folder '{}' does not exist ({}); {}", data_dir,
                                std::strerror(errno), fetch));
    if (!S_ISDIR(st.st_mode))
        throw Error(fmt::format("--data '{}' is not a folder: it takes the folder that holds {}/ or the folder with "
                                "the four IDX files",
                                data_dir, dataset));
    throw Error(fmt::format("missing data: neither '{}' nor '{}' holds the {} IDX files "
                            "(train-images-idx3-ubyte[.gz] and the other three); {}",
                            nested, data_dir, dataset, fetch));
}

Dataset load_dataset(const std::string& data_dir, const std::string& dataset, Split split) {
    const std::string dir = dataset_folder(data_dir, dataset);
    const std::string prefix = split == Split::Train ? "train" : "t10k";
    const std::string images = find_idx(dir, prefix + "-images-idx3-ubyte", dataset);
    const std::string labels = find_idx(dir, prefix + "-labels-idx1-ubyte", dataset);
    Dataset ds = load_idx_pair(images, labels);
    ds.name = dataset + (split == Split::Train ? " train" : " test");
    return ds;
}

std::string default_data_dir() {
    if (const char* env = std::getenv("CUMNIST_DATA"); env && *env) return env;
    if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/cumnist";
    if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/cumnist";
    return ".cache/cumnist";
}

namespace {
// A permutation of 0..n-1 from Philox under (seed, stream, counter): Fisher–Yates, swapping i with
// j uniform in [0, i], j from a 64-bit draw (bias < 2^-32).
std::vector<int32_t> philox_permutation(int n, uint64_t seed, uint32_t stream, uint64_t counter) {
    std::vector<int32_t> order(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) order[i] = i;
    for (int i = n - 1; i > 0; --i) {
        const uint64_t hi = philox_word(seed, stream, counter, 2 * static_cast<uint64_t>(i));
        const uint64_t lo = philox_word(seed, stream, counter, 2 * static_cast<uint64_t>(i) + 1);
        const uint64_t r = (hi << 32) | lo;
        const int j = static_cast<int>(r % static_cast<uint64_t>(i + 1));
        std::swap(order[i], order[j]);
    }
    return order;
}

Dataset subset(const Dataset& ds, const std::vector<int32_t>& indices, const std::string& name) {
    Dataset out;
    out.name = name;
    out.n = static_cast<int>(indices.size());
    out.rows = ds.rows;
    out.cols = ds.cols;
    const std::size_t f = static_cast<std::size_t>(ds.features());
    out.images.resize(indices.size() * f);
    out.labels.resize(indices.size());
    for (std::size_t k = 0; k < indices.size(); ++k) {
        const std::size_t i = static_cast<std::size_t>(indices[k]);
        std::copy(ds.images.begin() + static_cast<std::ptrdiff_t>(i * f),
                  ds.images.begin() + static_cast<std::ptrdiff_t>((i + 1) * f),
                  out.images.begin() + static_cast<std::ptrdiff_t>(k * f));
        out.labels[k] = ds.labels[i];
    }
    return out;
}
}  // namespace

std::vector<int32_t> epoch_order(int n, uint64_t seed, uint64_t epoch) {
    constexpr uint32_t kShuffleStream = 0x2u;
    return philox_permutation(n, seed, kShuffleStream, epoch);
}

ValidationSplit split_validation(const Dataset& ds, double fraction, uint64_t seed, int classes) {
    if (!(fraction > 0.0 && fraction < 1.0))
        throw Error(fmt::format("--validation-split must be a fraction in (0, 1), got {}", fraction));
    constexpr uint32_t kSplitStream = 0x3u;
    std::vector<std::vector<int32_t>> by_class(static_cast<std::size_t>(classes));
    for (int i = 0; i < ds.n; ++i) {
        CUMNIST_CHECK(ds.labels[i] < classes, "label {} of sample {} is not below {}", ds.labels[i], i, classes);
        by_class[ds.labels[i]].push_back(i);
    }
    std::vector<int32_t> train, validation;
    for (int c = 0; c < classes; ++c) {
        const std::vector<int32_t>& members = by_class[static_cast<std::size_t>(c)];
        const int count = static_cast<int>(members.size());
        const int held = static_cast<int>(std::lround(fraction * count));
        // The class's members in a seeded order (a stream of its own per class); the first `held`
        // are held out.
        const std::vector<int32_t> order = philox_permutation(count, seed, kSplitStream, static_cast<uint64_t>(c));
        for (int k = 0; k < count; ++k) (k < held ? validation : train).push_back(members[order[k]]);
    }
    if (validation.empty() || train.empty())
        throw Error(fmt::format("--validation-split {} of {} images leaves {} for validation and {} for training; "
                                "both need at least one",
                                fraction, ds.n, validation.size(), train.size()));
    // In data-set order: the training epochs shuffle them as they would the whole set.
    std::sort(train.begin(), train.end());
    std::sort(validation.begin(), validation.end());
    ValidationSplit s;
    s.train = subset(ds, train, ds.name);
    s.validation = subset(ds, validation, ds.name + " (validation)");
    s.validation_indices = std::move(validation);
    return s;
}

}  // namespace cumnist
