// IDX reading and validation, gzip included; data folder layout; per-epoch shuffling.
#include "cumnist/data.h"

#include <sys/stat.h>
#include <zlib.h>

#include <cerrno>
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
    if (static_cast<uint64_t>(st.st_size) > kMaxIdxBytes)
        throw Error(fmt::format("'{}' is {} bytes, larger than the {} bytes supported", path, st.st_size, kMaxIdxBytes));
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
    std::vector<uint8_t> bytes(static_cast<std::size_t>(st.st_size));
    if (!bytes.empty() && !in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size())))
        throw Error(fmt::format("cannot read '{}'", path));
    return bytes;
}

// Inflates a gzip stream whose uncompressed size must be exactly `expected` bytes.
std::vector<uint8_t> gunzip_exact(const std::string& name, const uint8_t* bytes, std::size_t size, std::size_t expected) {
    std::vector<uint8_t> out(expected);
    z_stream zs{};
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw Error(fmt::format("'{}': cannot initialise zlib", name));
    zs.next_in = const_cast<Bytef*>(bytes);
    zs.avail_in = static_cast<uInt>(size);
    zs.next_out = out.data();
    zs.avail_out = static_cast<uInt>(expected);
    int rc = inflate(&zs, Z_FINISH);
    uint8_t extra = 0;
    if (rc == Z_BUF_ERROR && zs.avail_out == 0) {  // output full: is there more?
        zs.next_out = &extra;
        zs.avail_out = 1;
        rc = inflate(&zs, Z_FINISH);
        if (zs.avail_out == 0) rc = Z_BUF_ERROR;
    }
    const uLong produced = zs.total_out;
    const char* msg = zs.msg;
    inflateEnd(&zs);
    if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT || rc == Z_MEM_ERROR || rc == Z_STREAM_ERROR)
        throw Error(fmt::format("'{}': corrupt gzip data ({})", name, msg ? msg : "inflate failed"));
    if (rc != Z_STREAM_END) {
        if (produced > expected)
            throw Error(fmt::format("'{}': the header promises {} bytes but the file holds more", name, expected));
        throw Error(fmt::format("'{}': truncated: the header promises {} bytes, the gzip stream ends early", name, expected));
    }
    return out;
}

}  // namespace

IdxArray parse_idx(const std::string& name, const uint8_t* bytes, std::size_t size, int expected_rank) {
    if (size == 0) throw Error(fmt::format("'{}' is empty, expected an IDX file", name));

    // The header comes first: decode just enough of a gzip stream to read it.
    uint8_t header[4 + 4 * 4] = {};
    const std::size_t header_size = 4 + 4 * static_cast<std::size_t>(expected_rank);
    const bool gz = is_gzip(bytes, size);
    if (gz) {
        z_stream zs{};
        if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw Error(fmt::format("'{}': cannot initialise zlib", name));
        zs.next_in = const_cast<Bytef*>(bytes);
        zs.avail_in = static_cast<uInt>(size);
        zs.next_out = header;
        zs.avail_out = static_cast<uInt>(header_size);
        const int rc = inflate(&zs, Z_SYNC_FLUSH);
        const std::size_t got = header_size - zs.avail_out;
        inflateEnd(&zs);
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
            throw Error(fmt::format("'{}': corrupt gzip data", name));
        if (got < 4) throw Error(fmt::format("'{}': truncated: no IDX header", name));
        if (got < header_size && header[2] == 0x08 && header[3] == expected_rank)
            throw Error(fmt::format("'{}': truncated: the IDX header needs {} bytes, found {}", name, header_size, got));
    } else {
        std::memcpy(header, bytes, std::min(size, header_size));
        if (size < 4) throw Error(fmt::format("'{}': truncated: {} bytes, no IDX header", name, size));
    }

    if (header[0] != 0 || header[1] != 0)
        throw Error(fmt::format("'{}': not an IDX file (magic {:02x}{:02x}{:02x}{:02x}, expected 0000080{})", name,
                                header[0], header[1], header[2], header[3], expected_rank));
    if (header[2] != 0x08)
        throw Error(fmt::format("'{}': IDX element type 0x{:02x}, expected 0x08 (unsigned byte)", name, header[2]));
    if (header[3] != expected_rank)
        throw Error(fmt::format("'{}': IDX file has {} dimensions, expected {}", name, header[3], expected_rank));
    if (!gz && size < header_size)
        throw Error(fmt::format("'{}': truncated: the IDX header needs {} bytes, found {}", name, header_size, size));

    IdxArray out;
    uint64_t count = 1;
    for (int d = 0; d < expected_rank; ++d) {
        out.dims.push_back(read_be32(header + 4 + 4 * d));
        count *= out.dims.back();
        if (count > kMaxIdxBytes)
            throw Error(fmt::format("'{}': header dimensions claim more than {} bytes of data", name, kMaxIdxBytes));
    }
    const uint64_t total = header_size + count;

    if (gz) {
        // The gzip trailer's ISIZE is the uncompressed length mod 2^32: check it before allocating.
        if (size < 18) throw Error(fmt::format("'{}': truncated gzip file", name));
        const uint32_t isize = uint32_t{bytes[size - 4]} | (uint32_t{bytes[size - 3]} << 8) |
                               (uint32_t{bytes[size - 2]} << 16) | (uint32_t{bytes[size - 1]} << 24);
        if (isize != static_cast<uint32_t>(total))
            throw Error(fmt::format("'{}': the header promises {} bytes of data, the gzip file holds {}", name, count,
                                    isize >= header_size ? isize - header_size : 0));
        std::vector<uint8_t> all = gunzip_exact(name, bytes, size, static_cast<std::size_t>(total));
        out.data.assign(all.begin() + static_cast<std::ptrdiff_t>(header_size), all.end());
    } else {
        if (size != total)
            throw Error(fmt::format("'{}': the header promises {} bytes of data, the file holds {}{}", name, count,
                                    size - header_size, size < total ? " (truncated)" : ""));
        out.data.assign(bytes + header_size, bytes + size);
    }
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

std::string find_idx(const std::string& dir, const std::string& base, const std::string& dataset) {
    for (const std::string& candidate : {dir + "/" + base, dir + "/" + base + ".gz"})
        if (file_exists(candidate)) return candidate;
    throw Error(fmt::format("missing data: no '{}' (or .gz) in '{}'; run scripts/fetch_data.sh to download {} there, "
                            "or pass --data DIR",
                            base, dir, dataset));
}
}  // namespace

Dataset load_dataset(const std::string& data_dir, const std::string& dataset, Split split) {
    if (dataset != "mnist" && dataset != "fashion")
        throw Error(fmt::format("unknown dataset '{}' (expected mnist or fashion)", dataset));
    const std::string dir = data_dir + "/" + dataset;
    const std::string prefix = split == Split::Train ? "train" : "t10k";
    Dataset ds = load_idx_pair(find_idx(dir, prefix + "-images-idx3-ubyte", dataset),
                               find_idx(dir, prefix + "-labels-idx1-ubyte", dataset));
    ds.name = dataset + (split == Split::Train ? " train" : " test");
    return ds;
}

std::string default_data_dir() {
    if (const char* env = std::getenv("CUMNIST_DATA"); env && *env) return env;
    if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/cumnist";
    if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/cumnist";
    return ".cache/cumnist";
}

std::vector<int32_t> epoch_order(int n, uint64_t seed, uint64_t epoch) {
    constexpr uint32_t kShuffleStream = 0x2u;
    std::vector<int32_t> order(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) order[i] = i;
    // Fisher–Yates: swap i with j uniform in [0, i], j from a 64-bit draw (bias < 2^-32).
    for (int i = n - 1; i > 0; --i) {
        const uint64_t hi = philox_word(seed, kShuffleStream, epoch, 2 * static_cast<uint64_t>(i));
        const uint64_t lo = philox_word(seed, kShuffleStream, epoch, 2 * static_cast<uint64_t>(i) + 1);
        const uint64_t r = (hi << 32) | lo;
        const int j = static_cast<int>(r % static_cast<uint64_t>(i + 1));
        std::swap(order[i], order[j]);
    }
    return order;
}

}  // namespace cumnist
