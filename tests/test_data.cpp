// Tests of the data layer (include/cumnist/data.h): the IDX reader on small files each test writes
// itself, raw and gzip-compressed, good and malformed (every rejection checks its message, DESIGN
// §5 and §8); pairing images with labels; the data folder layout; the per-epoch order; and, when
// scripts/fetch_data.sh has been run, the real MNIST and Fashion-MNIST files.
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "cumnist/data.h"
#include "cumnist/file_io.h"
#include "cumnist/error.h"
#include "test_support.h"

namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

// ----------------------------------------------------------------------------------------------
// Building IDX files

void put_be32(Bytes& out, uint32_t v) {
    out.push_back(static_cast<uint8_t>(v >> 24));
    out.push_back(static_cast<uint8_t>(v >> 16));
    out.push_back(static_cast<uint8_t>(v >> 8));
    out.push_back(static_cast<uint8_t>(v));
}

// An IDX file: magic 00 00 <type> <rank>, the dimensions big-endian, then `data` as given (which
// need not agree with the dimensions: that is how the malformed files are made).
Bytes idx_bytes(const std::vector<uint32_t>& dims, const Bytes& data, uint8_t type = 0x08) {
    Bytes out = {0x00, 0x00, type, static_cast<uint8_t>(dims.size())};
    for (uint32_t d : dims) put_be32(out, d);
    out.insert(out.end(), data.begin(), data.end());
    return out;
}

// A well-formed file: `data` has exactly the product of `dims` bytes.
Bytes idx_file(const std::vector<uint32_t>& dims, const Bytes& data) {
    const uint64_t count = std::accumulate(dims.begin(), dims.end(), uint64_t{1},
                                           [](uint64_t a, uint32_t b) { return a * b; });
    EXPECT_EQ(count, data.size()) << "test bug: data does not match dims";
    return idx_bytes(dims, data);
}

// Pixel-like bytes covering the whole 0..255 range.
Bytes pixels(std::size_t n, uint32_t seed) { return cumnist_test::uniform_bytes(n, 0, 255, seed); }

// One gzip member (RFC 1952) holding `raw`, made with deflate and a gzip wrapper (16 + MAX_WBITS).
Bytes gzip_bytes(const Bytes& raw, int level = Z_DEFAULT_COMPRESSION) {
    z_stream zs{};
    if (deflateInit2(&zs, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        throw std::runtime_error("deflateInit2 failed");
    Bytes out(deflateBound(&zs, static_cast<uLong>(raw.size())) + 64);
    zs.next_in = const_cast<Bytef*>(raw.data());
    zs.avail_in = static_cast<uInt>(raw.size());
    zs.next_out = out.data();
    zs.avail_out = static_cast<uInt>(out.size());
    const int rc = deflate(&zs, Z_FINISH);
    const uLong produced = zs.total_out;
    deflateEnd(&zs);
    if (rc != Z_STREAM_END) throw std::runtime_error("deflate did not finish");
    out.resize(produced);
    return out;
}

void write_bytes(const std::string& path, const Bytes& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!f) throw std::runtime_error("cannot write " + path);
}

// The other way of writing gzip: zlib's gzip file API, as the gzip tool would.
void write_gzfile(const std::string& path, const Bytes& raw) {
    gzFile f = gzopen(path.c_str(), "wb9");
    if (f == nullptr) throw std::runtime_error("gzopen failed for " + path);
    const int written = raw.empty() ? 0 : gzwrite(f, raw.data(), static_cast<unsigned>(raw.size()));
    const int closed = gzclose(f);
    if (written != static_cast<int>(raw.size()) || closed != Z_OK) throw std::runtime_error("gzwrite failed for " + path);
}

// A fresh folder under ::testing::TempDir(), removed with everything in it on destruction.
class TempDir {
public:
    TempDir() {
        std::string templ = (fs::path(::testing::TempDir()) / "cumnist_data_XXXXXX").string();
        if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed: " + templ);
        m_path = templ;
    }
    ~TempDir() { remove(); }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    void remove() {
        if (m_path.empty()) return;
        std::error_code ec;
        fs::remove_all(m_path, ec);
        m_path.clear();
    }
    const std::string& path() const { return m_path; }
    std::string file(const std::string& name) const { return m_path + "/" + name; }

private:
    std::string m_path;
};

// ----------------------------------------------------------------------------------------------
// Checking errors

// Runs `f`; succeeds when it throws cumnist::Error whose message contains every one of `needles`.
// The message is shown on failure and recorded as a test property (see --gtest_output=xml).
template <class F>
::testing::AssertionResult throws_error(F&& f, std::initializer_list<std::string> needles) {
    try {
        f();
    } catch (const cumnist::Error& e) {
        const std::string what = e.what();
        ::testing::Test::RecordProperty("error_message", what);
        for (const std::string& needle : needles)
            if (what.find(needle) == std::string::npos)
                return ::testing::AssertionFailure() << "the message \"" << what << "\" lacks \"" << needle << "\"";
        return ::testing::AssertionSuccess() << what;
    } catch (const std::exception& e) {
        return ::testing::AssertionFailure() << "threw " << typeid(e).name() << " (not cumnist::Error): " << e.what();
    } catch (...) {
        return ::testing::AssertionFailure() << "threw something that is not a std::exception";
    }
    return ::testing::AssertionFailure() << "no exception was thrown";
}

// The message of the cumnist::Error that `f` throws, or a description of what happened instead.
template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const cumnist::Error& e) {
        ::testing::Test::RecordProperty("error_message", e.what());
        return e.what();
    } catch (const std::exception& e) {
        return std::string("<not cumnist::Error: ") + e.what() + ">";
    }
    return "<no exception>";
}

#define EXPECT_CUMNIST_ERROR(statement, ...) EXPECT_TRUE(throws_error([&] { statement; }, {__VA_ARGS__}))

// A rank-3 file with a header of `n` x 28 x 28 but only 84 bytes of data: 100 bytes in all.
Bytes small_file_claiming(uint32_t n) { return idx_bytes({n, 28, 28}, Bytes(84, 0x11)); }

// Writes `bytes` to `path` and reads it back with read_idx.
class IdxFileTest : public ::testing::Test {
protected:
    std::string write(const std::string& name, const Bytes& bytes) {
        const std::string path = m_dir.file(name);
        write_bytes(path, bytes);
        return path;
    }
    TempDir m_dir;
};

// ----------------------------------------------------------------------------------------------
// Good files

using IdxRead = IdxFileTest;

TEST_F(IdxRead, RawImages) {
    const Bytes data = pixels(3 * 5 * 4, 1);
    const std::string path = write("images-idx3-ubyte", idx_file({3, 5, 4}, data));
    const cumnist::IdxArray a = cumnist::read_idx(path, 3);
    EXPECT_EQ(a.dims, (std::vector<uint32_t>{3, 5, 4}));
    EXPECT_EQ(a.data, data);
}

TEST_F(IdxRead, RawLabels) {
    const Bytes labels = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9};
    const std::string path = write("labels-idx1-ubyte", idx_file({11}, labels));
    const cumnist::IdxArray a = cumnist::read_idx(path, 1);
    EXPECT_EQ(a.dims, (std::vector<uint32_t>{11}));
    EXPECT_EQ(a.data, labels);
}

TEST_F(IdxRead, GzipImagesFromDeflate) {
    // Several KiB, so inflate goes through more than one call's worth of work.
    const Bytes data = pixels(50 * 28 * 28, 2);
    const std::string path = write("images-idx3-ubyte.gz", gzip_bytes(idx_file({50, 28, 28}, data), 9));
    const cumnist::IdxArray a = cumnist::read_idx(path, 3);
    EXPECT_EQ(a.dims, (std::vector<uint32_t>{50, 28, 28}));
    EXPECT_EQ(a.data, data);
}

TEST_F(IdxRead, GzipLabelsFromGzwrite) {
    const Bytes labels = cumnist_test::uniform_bytes(1000, 0, 9, 3);
    const std::string path = m_dir.file("labels-idx1-ubyte.gz");
    write_gzfile(path, idx_file({1000}, labels));
    const cumnist::IdxArray a = cumnist::read_idx(path, 1);
    EXPECT_EQ(a.dims, (std::vector<uint32_t>{1000}));
    EXPECT_EQ(a.data, labels);
}

TEST_F(IdxRead, GzipDetectedByContentNotName) {
    // A gzip file without ".gz", and a raw file with it: both read correctly.
    const Bytes labels = {3, 1, 4, 1, 5};
    const std::string gz_plain = write("labels-idx1-ubyte", gzip_bytes(idx_file({5}, labels)));
    const std::string raw_gz = write("labels-idx1-ubyte.gz", idx_file({5}, labels));
    EXPECT_EQ(cumnist::read_idx(gz_plain, 1).data, labels);
    EXPECT_EQ(cumnist::read_idx(raw_gz, 1).data, labels);
}

TEST_F(IdxRead, StoredGzipBlocks) {
    // Level 0: stored (uncompressed) deflate blocks.
    const Bytes data = pixels(7 * 3 * 3, 4);
    const std::string path = write("stored.gz", gzip_bytes(idx_file({7, 3, 3}, data), 0));
    EXPECT_EQ(cumnist::read_idx(path, 3).data, data);
}

TEST_F(IdxRead, ZeroItemsParse) {
    // An empty array is well-formed IDX; refusing it is load_idx_pair's job.
    const cumnist::IdxArray a = cumnist::read_idx(write("empty-idx3", idx_file({0, 28, 28}, {})), 3);
    EXPECT_EQ(a.dims, (std::vector<uint32_t>{0, 28, 28}));
    EXPECT_TRUE(a.data.empty());
}

TEST(IdxParse, InMemoryRawAndGzip) {
    const Bytes data = pixels(2 * 3 * 4, 5);
    const Bytes raw = idx_file({2, 3, 4}, data);
    const cumnist::IdxArray a = cumnist::parse_idx("mem", raw.data(), raw.size(), 3);
    EXPECT_EQ(a.dims, (std::vector<uint32_t>{2, 3, 4}));
    EXPECT_EQ(a.data, data);

    const Bytes gz = gzip_bytes(raw);
    const cumnist::IdxArray b = cumnist::parse_idx("mem.gz", gz.data(), gz.size(), 3);
    EXPECT_EQ(b.dims, a.dims);
    EXPECT_EQ(b.data, data);

    const Bytes labels = {9, 8, 7};
    const Bytes lraw = idx_file({3}, labels);
    EXPECT_EQ(cumnist::parse_idx("mem-labels", lraw.data(), lraw.size(), 1).data, labels);
}

TEST(IdxParse, MessagesUseTheGivenName) {
    const Bytes bad = {0x12, 0x34, 0x08, 0x01, 0, 0, 0, 0};
    EXPECT_CUMNIST_ERROR(cumnist::parse_idx("my-buffer", bad.data(), bad.size(), 1), "my-buffer", "not an IDX file");
    EXPECT_CUMNIST_ERROR(cumnist::parse_idx("nothing", nullptr, 0, 1), "nothing", "empty");
}

// ----------------------------------------------------------------------------------------------
// Malformed files: each is refused with one clear message naming the file.

using IdxMalformed = IdxFileTest;

TEST_F(IdxMalformed, EmptyFile) {
    const std::string path = write("empty", {});
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "empty");
}

TEST_F(IdxMalformed, WrongMagic) {
    Bytes bytes = idx_file({2}, {1, 2});
    bytes[0] = 0x12;
    bytes[1] = 0x34;
    const std::string path = write("bad-magic", bytes);
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 1), path, "not an IDX file", "12340801", "00000801");
}

TEST_F(IdxMalformed, TextFileIsNotIdx) {
    const std::string text = "<html><body>404 Not Found</body></html>\n";
    const std::string path = write("downloaded-error-page", Bytes(text.begin(), text.end()));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "not an IDX file");
}

TEST_F(IdxMalformed, FloatElementType) {
    // 0x0D is IDX's float type: 4-byte elements, not the unsigned bytes we read.
    const std::string path = write("floats", idx_bytes({2}, Bytes(8, 0), 0x0D));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 1), path, "element type", "0x0d", "0x08");
}

TEST_F(IdxMalformed, LabelsReadAsImages) {
    const std::string path = write("labels-idx1-ubyte", idx_file({4}, {1, 2, 3, 4}));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "1 dimensions", "expected 3");
}

TEST_F(IdxMalformed, ImagesReadAsLabels) {
    const std::string path = write("images-idx3-ubyte", idx_file({1, 2, 2}, {1, 2, 3, 4}));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 1), path, "3 dimensions", "expected 1");
}

TEST_F(IdxMalformed, TruncatedHeader) {
    // The magic says rank 3 (16 header bytes) but the file stops after 10.
    Bytes bytes = idx_file({2, 2, 2}, Bytes(8, 7));
    bytes.resize(10);
    const std::string path = write("short-header", bytes);
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "truncated", "16", "10");
}

TEST_F(IdxMalformed, ShorterThanMagic) {
    const std::string path = write("three-bytes", {0x00, 0x00, 0x08});
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 1), path, "truncated");
}

TEST_F(IdxMalformed, TruncatedData) {
    const std::string path = write("short-data", idx_bytes({2, 2, 2}, Bytes(5, 7)));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "truncated", "promises 8", "holds 5");
}

TEST_F(IdxMalformed, ExtraTrailingData) {
    const std::string path = write("long-data", idx_bytes({2, 2, 2}, Bytes(10, 7)));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "promises 8", "holds 10");
}

TEST_F(IdxMalformed, ExtraTrailingLabel) {
    const std::string path = write("labels", idx_bytes({3}, {1, 2, 3, 4}));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 1), path, "promises 3", "holds 4");
}

TEST_F(IdxMalformed, HeaderClaimsBillionsOfImages) {
    // 2,000,000,000 × 28 × 28 ≈ 1.6e12 bytes claimed by a 100-byte file.
    const Bytes bytes = small_file_claiming(2000000000u);
    ASSERT_EQ(bytes.size(), 100u);
    const std::string path = write("huge-claim", bytes);
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "claim more than");
}

TEST_F(IdxMalformed, HeaderClaimsMaxDims) {
    const std::string path = write("max-dims", idx_bytes({0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}, Bytes(84, 0)));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "claim more than");
}

TEST_F(IdxMalformed, HeaderClaimsMillionsOfImages) {
    // 1,000,000 × 28 × 28 = 784,000,000 bytes: under the size cap, so only the size check stops it.
    const std::string path = write("big-claim", small_file_claiming(1000000u));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "promises 784000000", "holds 84");
}

TEST_F(IdxMalformed, GzipHeaderClaimsBillionsOfImages) {
    const std::string path = write("huge-claim.gz", gzip_bytes(small_file_claiming(2000000000u)));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "claim more than");
}

TEST_F(IdxMalformed, GzipHeaderClaimsMillionsOfImages) {
    // Caught by the gzip trailer's ISIZE (100 bytes uncompressed), before inflating.
    const std::string path = write("big-claim.gz", gzip_bytes(small_file_claiming(1000000u)));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "promises 784000000", "holds 84");
}

TEST_F(IdxMalformed, GzipTruncatedData) {
    // A well-formed gzip stream whose IDX content is short.
    const std::string path = write("short.gz", gzip_bytes(idx_bytes({2, 2, 2}, Bytes(5, 7))));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "promises 8", "holds 5");
}

TEST_F(IdxMalformed, GzipExtraData) {
    // Inflation stops one byte past what the header promises, so the excess is reported, not counted.
    const std::string path = write("long.gz", gzip_bytes(idx_bytes({2, 2, 2}, Bytes(10, 7))));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "promises 8", "holds more");
}

TEST_F(IdxMalformed, GzipWrongMagic) {
    // Compressed twice: the content is itself a gzip file (magic 1f8b...).
    const Bytes twice = gzip_bytes(gzip_bytes(idx_file({20, 28, 28}, pixels(20 * 28 * 28, 15))));
    const std::string path = write("twice.gz", twice);
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "not an IDX file", "1f8b");
}

TEST_F(IdxMalformed, GzipShortWithWrongMagic) {
    // A 10-byte content with a bad magic is "not an IDX file", compressed or not, not "truncated".
    const Bytes content = {0x12, 0x34, 0x08, 0x03, 0, 0, 0, 1, 0, 0};
    const std::string raw = write("short-bad-magic", content);
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(raw, 3), raw, "not an IDX file", "12340803");
    const std::string gz = write("short-bad-magic.gz", gzip_bytes(content));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(gz, 3), gz, "not an IDX file", "12340803");
}

TEST_F(IdxMalformed, GzipWrongRank) {
    const std::string path = write("labels.gz", gzip_bytes(idx_file({4}, {1, 2, 3, 4})));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "1 dimensions", "expected 3");
}

TEST_F(IdxMalformed, GzipTruncatedHeader) {
    // The uncompressed content stops after 10 of the 16 header bytes.
    const std::string path = write("short-header.gz", gzip_bytes({0, 0, 0x08, 0x03, 0, 0, 0, 2, 0, 0}));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "truncated", "16", "10");
}

TEST_F(IdxMalformed, GzipOfEmptyContent) {
    const std::string path = write("nothing.gz", gzip_bytes({}));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "truncated");
}

TEST_F(IdxMalformed, CorruptGzip) {
    // A valid 10-byte gzip header (deflate, no flags, OS = Unix) followed by garbage: 0xff starts
    // a deflate block of the reserved type 3.
    Bytes bytes = {0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03};
    bytes.insert(bytes.end(), 40, 0xff);
    const std::string path = write("corrupt.gz", bytes);
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "corrupt gzip");
}

TEST_F(IdxMalformed, GzipCorruptedInTheMiddle) {
    // A byte flipped in the compressed data, the header and the trailer intact: caught by
    // inflate (invalid code or CRC mismatch).
    Bytes gz = gzip_bytes(idx_file({20, 28, 28}, pixels(20 * 28 * 28, 6)));
    gz[gz.size() / 2] ^= 0x5a;
    const std::string path = write("flipped.gz", gz);
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "corrupt gzip");
}

TEST_F(IdxMalformed, GzipHeaderOnly) {
    // The 10-byte gzip header and nothing after it.
    const std::string path = write("header-only.gz", {0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03});
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "truncated");
}

TEST_F(IdxMalformed, GzipCutInsideIdxHeader) {
    // Cut 12 bytes into the stream: the gzip header and 2 bytes of deflate data.
    Bytes gz = gzip_bytes(idx_file({20, 28, 28}, pixels(20 * 28 * 28, 7)));
    gz.resize(12);
    const std::string path = write("cut-early.gz", gz);
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "truncated");
}

TEST_F(IdxMalformed, GzipCutInTheMiddle) {
    // An interrupted download: the gzip stream stops half-way, so the last four bytes are
    // compressed data, not the trailer's ISIZE. The message must say the file is truncated (or
    // corrupt), not report those four bytes as the size the file holds.
    Bytes gz = gzip_bytes(idx_file({20, 28, 28}, pixels(20 * 28 * 28, 8)));
    gz.resize(gz.size() / 2);
    const std::string path = write("cut.gz", gz);
    const std::string what = error_of([&] { cumnist::read_idx(path, 3); });
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_TRUE(what.find("truncated") != std::string::npos || what.find("corrupt") != std::string::npos)
        << "the message does not say the file is truncated or corrupt: " << what;
}

TEST_F(IdxMalformed, GzipCutJustBeforeTrailer) {
    // The whole deflate stream but only the CRC half of the 8-byte trailer.
    Bytes gz = gzip_bytes(idx_file({20, 28, 28}, pixels(20 * 28 * 28, 9)));
    gz.resize(gz.size() - 4);
    const std::string path = write("no-isize.gz", gz);
    const std::string what = error_of([&] { cumnist::read_idx(path, 3); });
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_TRUE(what.find("truncated") != std::string::npos || what.find("corrupt") != std::string::npos)
        << "the message does not say the file is truncated or corrupt: " << what;
}

TEST_F(IdxMalformed, TooShortForGzip) {
    // The gzip magic and nothing else.
    const std::string path = write("magic-only.gz", {0x1f, 0x8b});
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "truncated");
}

TEST_F(IdxMalformed, Directory) {
    const std::string path = m_dir.file("a-folder");
    ASSERT_TRUE(fs::create_directory(path));
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "directory");
}

TEST_F(IdxMalformed, MissingFile) {
    const std::string path = m_dir.file("does-not-exist");
    EXPECT_CUMNIST_ERROR(cumnist::read_idx(path, 3), path, "cannot open", "No such file");
}

// ----------------------------------------------------------------------------------------------
// A header claiming more than the file holds must fail before memory is allocated for the claim.
// Each check runs in a child process (a death test) whose address space may grow by at most
// 256 MiB, so allocating what the header claims would end in std::bad_alloc, not cumnist::Error.

// In the child: caps the address space, parses `bytes` as rank 3 and exits 0 when a cumnist::Error
// naming `needle` is thrown (its message goes to stderr), 1 for anything else.
[[noreturn]] void parse_under_address_cap(const Bytes& bytes, const std::string& needle) {
    long pages = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
        std::fclose(f);
    }
    if (pages <= 0) {
        std::fprintf(stderr, "cannot read /proc/self/statm\n");
        std::_Exit(1);
    }
    const rlim_t cap = static_cast<rlim_t>(pages) * static_cast<rlim_t>(::sysconf(_SC_PAGESIZE)) + (rlim_t{256} << 20);
    rlimit lim{};
    ::getrlimit(RLIMIT_AS, &lim);
    if (lim.rlim_cur == RLIM_INFINITY || lim.rlim_cur > cap) lim.rlim_cur = cap;
    if (::setrlimit(RLIMIT_AS, &lim) != 0) {
        std::fprintf(stderr, "setrlimit failed\n");
        std::_Exit(1);
    }
    try {
        cumnist::parse_idx("capped", bytes.data(), bytes.size(), 3);
        std::fprintf(stderr, "accepted\n");
    } catch (const cumnist::Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        std::_Exit(std::string(e.what()).find(needle) != std::string::npos ? 0 : 1);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "not cumnist::Error: %s\n", e.what());
    }
    std::_Exit(1);
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUMNIST_UNDER_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(CUMNIST_UNDER_ASAN)
#define CUMNIST_SKIP_UNDER_ASAN() GTEST_SKIP() << "an address-space cap cannot be used under AddressSanitizer"
#else
#define CUMNIST_SKIP_UNDER_ASAN() (void)0
#endif

TEST(IdxHugeClaimDeathTest, RawFailsWithoutAllocating) {
    CUMNIST_SKIP_UNDER_ASAN();
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    const Bytes billions = small_file_claiming(2000000000u);
    EXPECT_EXIT(parse_under_address_cap(billions, "claim more than"), ::testing::ExitedWithCode(0), "claim more than");
    const Bytes millions = small_file_claiming(1000000u);  // 784 MB, more than the cap allows
    EXPECT_EXIT(parse_under_address_cap(millions, "promises 784000000"), ::testing::ExitedWithCode(0),
                "promises 784000000");
}

TEST(IdxHugeClaimDeathTest, GzipFailsWithoutAllocating) {
    CUMNIST_SKIP_UNDER_ASAN();
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    const Bytes billions = gzip_bytes(small_file_claiming(2000000000u));
    EXPECT_EXIT(parse_under_address_cap(billions, "claim more than"), ::testing::ExitedWithCode(0), "claim more than");
    const Bytes millions = gzip_bytes(small_file_claiming(1000000u));
    EXPECT_EXIT(parse_under_address_cap(millions, "promises 784000000"), ::testing::ExitedWithCode(0),
                "promises 784000000");
}

// ----------------------------------------------------------------------------------------------
// load_idx_pair

class IdxPair : public IdxFileTest {};

TEST_F(IdxPair, MatchingPairLoads) {
    const Bytes images = pixels(4 * 3 * 2, 10);
    const Bytes labels = {7, 0, 9, 3};
    const std::string ipath = write("images-idx3-ubyte", idx_file({4, 3, 2}, images));
    const std::string lpath = write("labels-idx1-ubyte.gz", gzip_bytes(idx_file({4}, labels)));
    const cumnist::Dataset ds = cumnist::load_idx_pair(ipath, lpath);
    EXPECT_EQ(ds.n, 4);
    EXPECT_EQ(ds.rows, 3);
    EXPECT_EQ(ds.cols, 2);
    EXPECT_EQ(ds.features(), 6);
    EXPECT_EQ(ds.images, images);
    EXPECT_EQ(ds.labels, labels);
}

TEST_F(IdxPair, CountsDisagree) {
    const std::string ipath = write("images", idx_file({3, 2, 2}, pixels(12, 11)));
    const std::string lpath = write("labels", idx_file({4}, {1, 2, 3, 4}));
    EXPECT_CUMNIST_ERROR(cumnist::load_idx_pair(ipath, lpath), ipath, lpath, "3 images", "4 labels");
}

TEST_F(IdxPair, LabelOutOfRange) {
    const std::string ipath = write("images", idx_file({4, 2, 2}, pixels(16, 12)));
    const std::string lpath = write("labels", idx_file({4}, {1, 9, 10, 2}));
    EXPECT_CUMNIST_ERROR(cumnist::load_idx_pair(ipath, lpath), lpath, "label 10", "index 2", "[0, 10)");
}

TEST_F(IdxPair, Label255OutOfRange) {
    const std::string ipath = write("images", idx_file({2, 1, 1}, {0, 0}));
    const std::string lpath = write("labels", idx_file({2}, {0, 255}));
    EXPECT_CUMNIST_ERROR(cumnist::load_idx_pair(ipath, lpath), lpath, "label 255", "index 1");
}

TEST_F(IdxPair, ClassesBoundTheLabels) {
    const std::string ipath = write("images", idx_file({3, 1, 1}, {0, 0, 0}));
    const std::string lpath = write("labels", idx_file({3}, {0, 2, 1}));
    EXPECT_EQ(cumnist::load_idx_pair(ipath, lpath, 3).labels, (Bytes{0, 2, 1}));
    EXPECT_CUMNIST_ERROR(cumnist::load_idx_pair(ipath, lpath, 2), lpath, "label 2", "index 1", "[0, 2)");
}

TEST_F(IdxPair, ZeroImages) {
    const std::string ipath = write("images", idx_file({0, 28, 28}, {}));
    const std::string lpath = write("labels", idx_file({0}, {}));
    EXPECT_CUMNIST_ERROR(cumnist::load_idx_pair(ipath, lpath), ipath, "no images");
}

TEST_F(IdxPair, ZeroSizedImages) {
    const std::string ipath = write("images", idx_file({2, 0, 28}, {}));
    const std::string lpath = write("labels", idx_file({2}, {1, 2}));
    EXPECT_CUMNIST_ERROR(cumnist::load_idx_pair(ipath, lpath), ipath, "0x28", "not supported");
}

TEST_F(IdxPair, FilesSwapped) {
    const std::string ipath = write("images", idx_file({2, 2, 2}, pixels(8, 13)));
    const std::string lpath = write("labels", idx_file({2}, {1, 2}));
    EXPECT_CUMNIST_ERROR(cumnist::load_idx_pair(lpath, ipath), lpath, "dimensions");
}

TEST_F(IdxPair, ErrorInEitherFileNamesIt) {
    const std::string ipath = write("images", idx_file({2, 2, 2}, pixels(8, 14)));
    const std::string lpath = write("labels", idx_bytes({2}, {1}));  // truncated
    EXPECT_CUMNIST_ERROR(cumnist::load_idx_pair(ipath, lpath), lpath, "truncated");
    EXPECT_CUMNIST_ERROR(cumnist::load_idx_pair(m_dir.file("nope"), lpath), m_dir.file("nope"), "cannot open");
}

// ----------------------------------------------------------------------------------------------
// load_dataset: <dir>/<dataset>/<original file names>, raw or with ".gz"

class LoadDataset : public ::testing::Test {
protected:
    // Writes one split of a small data set into <dir>/<dataset>/, raw or gzip-compressed.
    void write_split(const std::string& dataset, const std::string& prefix, int n, bool gz, uint32_t seed) {
        const std::string dir = m_dir.file(dataset);
        fs::create_directories(dir);
        m_images = pixels(static_cast<std::size_t>(n) * 4 * 4, seed);
        m_labels = cumnist_test::uniform_bytes(static_cast<std::size_t>(n), 0, 9, seed + 1);
        const Bytes images = idx_file({static_cast<uint32_t>(n), 4, 4}, m_images);
        const Bytes labels = idx_file({static_cast<uint32_t>(n)}, m_labels);
        const std::string ipath = dir + "/" + prefix + "-images-idx3-ubyte";
        const std::string lpath = dir + "/" + prefix + "-labels-idx1-ubyte";
        if (gz) {
            write_gzfile(ipath + ".gz", images);
            write_bytes(lpath + ".gz", gzip_bytes(labels));
        } else {
            write_bytes(ipath, images);
            write_bytes(lpath, labels);
        }
    }
    TempDir m_dir;
    Bytes m_images, m_labels;
};

TEST_F(LoadDataset, UnknownDatasetName) {
    EXPECT_CUMNIST_ERROR(cumnist::load_dataset(m_dir.path(), "cifar10", cumnist::Split::Train), "unknown dataset",
                         "cifar10", "mnist", "fashion");
}

TEST_F(LoadDataset, MissingFilesSayHowToFetch) {
    // No data set in <dir>/mnist nor in <dir> itself: both places are named, with the fix.
    EXPECT_CUMNIST_ERROR(cumnist::load_dataset(m_dir.path(), "mnist", cumnist::Split::Train), "missing data",
                         m_dir.file("mnist"), "train-images-idx3-ubyte[.gz]", "scripts/fetch_data.sh mnist");
    EXPECT_CUMNIST_ERROR(cumnist::load_dataset(m_dir.path(), "fashion", cumnist::Split::Test), m_dir.file("fashion"),
                         "scripts/fetch_data.sh fashion");
}

// `--data ~/.cache/cumnist/mnist`: the folder that itself holds the four files is accepted.
TEST_F(LoadDataset, FolderHoldingTheFilesIsAccepted) {
    write_split("mnist", "train", 5, true, 25);
    const std::string folder = m_dir.file("mnist");
    EXPECT_EQ(cumnist::dataset_folder(folder, "mnist"), folder);
    EXPECT_EQ(cumnist::dataset_folder(m_dir.path(), "mnist"), folder);
    const cumnist::Dataset ds = cumnist::load_dataset(folder, "mnist", cumnist::Split::Train);
    EXPECT_EQ(ds.n, 5);
    EXPECT_EQ(ds.images, m_images);
    EXPECT_EQ(ds.labels, m_labels);
    // A folder named after one data set is not taken for the other (it would mislabel the model);
    // a folder of another name is what the user says it is.
    EXPECT_CUMNIST_ERROR(cumnist::dataset_folder(folder, "fashion"), "holds the mnist data set, not fashion",
                         "pass --dataset mnist");
    EXPECT_CUMNIST_ERROR(cumnist::dataset_folder(folder + "/", "fashion"), "holds the mnist data set");
    fs::rename(folder, m_dir.file("digits"));
    EXPECT_EQ(cumnist::dataset_folder(m_dir.file("digits"), "fashion"), m_dir.file("digits"));
    fs::rename(m_dir.file("digits"), folder);
    // The inputs the commands guard against overwriting are the files found there.
    const std::vector<cumnist::NamedPath> inputs = cumnist::dataset_inputs(folder, "mnist");
    ASSERT_EQ(inputs.size(), 2u);
    EXPECT_EQ(inputs[0].path, folder + "/train-images-idx3-ubyte.gz");
    EXPECT_EQ(inputs[1].path, folder + "/train-labels-idx1-ubyte.gz");
}

// A file, or a path that does not exist, is described as what it is.
TEST_F(LoadDataset, DataPathThatIsNotAFolderIsNamed) {
    write_bytes(m_dir.file("train-images-idx3-ubyte"), idx_file({1, 4, 4}, pixels(16, 26)));
    EXPECT_CUMNIST_ERROR(cumnist::load_dataset(m_dir.file("train-images-idx3-ubyte"), "mnist", cumnist::Split::Train),
                         "is not a folder", m_dir.file("train-images-idx3-ubyte"), "mnist/");
    EXPECT_CUMNIST_ERROR(cumnist::load_dataset(m_dir.file("nowhere"), "mnist", cumnist::Split::Train),
                         "does not exist", m_dir.file("nowhere"), "scripts/fetch_data.sh");
    EXPECT_TRUE(cumnist::dataset_inputs(m_dir.file("nowhere"), "mnist").empty());
}

TEST_F(LoadDataset, MissingLabelsSayHowToFetch) {
    write_split("mnist", "train", 3, false, 20);
    fs::remove(m_dir.file("mnist/train-labels-idx1-ubyte"));
    EXPECT_CUMNIST_ERROR(cumnist::load_dataset(m_dir.path(), "mnist", cumnist::Split::Train),
                         "train-labels-idx1-ubyte", "scripts/fetch_data.sh");
}

TEST_F(LoadDataset, FindsRawFiles) {
    write_split("mnist", "train", 5, false, 21);
    const cumnist::Dataset ds = cumnist::load_dataset(m_dir.path(), "mnist", cumnist::Split::Train);
    EXPECT_EQ(ds.n, 5);
    EXPECT_EQ(ds.rows, 4);
    EXPECT_EQ(ds.cols, 4);
    EXPECT_EQ(ds.images, m_images);
    EXPECT_EQ(ds.labels, m_labels);
    EXPECT_NE(ds.name.find("mnist"), std::string::npos) << ds.name;
}

TEST_F(LoadDataset, FindsGzipFiles) {
    write_split("mnist", "t10k", 6, true, 22);
    const cumnist::Dataset ds = cumnist::load_dataset(m_dir.path(), "mnist", cumnist::Split::Test);
    EXPECT_EQ(ds.n, 6);
    EXPECT_EQ(ds.images, m_images);
    EXPECT_EQ(ds.labels, m_labels);
    // The test split does not stand in for the training split.
    EXPECT_CUMNIST_ERROR(cumnist::load_dataset(m_dir.path(), "mnist", cumnist::Split::Train), "'train-",
                         "scripts/fetch_data.sh");
}

TEST_F(LoadDataset, FashionFolder) {
    write_split("fashion", "train", 4, true, 23);
    const cumnist::Dataset ds = cumnist::load_dataset(m_dir.path(), "fashion", cumnist::Split::Train);
    EXPECT_EQ(ds.n, 4);
    EXPECT_EQ(ds.labels, m_labels);
    EXPECT_NE(ds.name.find("fashion"), std::string::npos) << ds.name;
    EXPECT_CUMNIST_ERROR(cumnist::load_dataset(m_dir.path(), "mnist", cumnist::Split::Train), "scripts/fetch_data.sh");
}

TEST_F(LoadDataset, BadFileInFolderIsNamed) {
    write_split("mnist", "train", 3, false, 24);
    write_bytes(m_dir.file("mnist/train-labels-idx1-ubyte"), {0x3c, 0x68, 0x74, 0x6d, 0x6c, 0x3e});
    EXPECT_CUMNIST_ERROR(cumnist::load_dataset(m_dir.path(), "mnist", cumnist::Split::Train),
                         m_dir.file("mnist/train-labels-idx1-ubyte"), "not an IDX file");
}

// ----------------------------------------------------------------------------------------------
// default_data_dir

// Sets or unsets one environment variable for the life of the guard, then restores it.
class EnvGuard {
public:
    explicit EnvGuard(std::string name) : m_name(std::move(name)) {
        if (const char* v = std::getenv(m_name.c_str())) m_had = true, m_old = v;
    }
    ~EnvGuard() {
        if (m_had)
            ::setenv(m_name.c_str(), m_old.c_str(), 1);
        else
            ::unsetenv(m_name.c_str());
    }
    EnvGuard(const EnvGuard&) = delete;
    EnvGuard& operator=(const EnvGuard&) = delete;
    void set(const std::string& value) { ::setenv(m_name.c_str(), value.c_str(), 1); }
    void unset() { ::unsetenv(m_name.c_str()); }

private:
    std::string m_name;
    bool m_had = false;
    std::string m_old;
};

TEST(DefaultDataDir, HonoursCumnistData) {
    EnvGuard data("CUMNIST_DATA");
    data.set("/somewhere/else/data");
    EXPECT_EQ(cumnist::default_data_dir(), "/somewhere/else/data");
}

TEST(DefaultDataDir, FallsBackToXdgThenHome) {
    EnvGuard data("CUMNIST_DATA"), xdg("XDG_CACHE_HOME"), home("HOME");
    data.unset();
    xdg.set("/xdg/cache");
    home.set("/home/someone");
    EXPECT_EQ(cumnist::default_data_dir(), "/xdg/cache/cumnist");
    xdg.unset();
    EXPECT_EQ(cumnist::default_data_dir(), "/home/someone/.cache/cumnist");
    data.set("");  // empty counts as unset
    EXPECT_EQ(cumnist::default_data_dir(), "/home/someone/.cache/cumnist");
}

// ----------------------------------------------------------------------------------------------
// epoch_order

::testing::AssertionResult is_permutation_of_iota(const std::vector<int32_t>& order, int n) {
    if (order.size() != static_cast<std::size_t>(n))
        return ::testing::AssertionFailure() << "size " << order.size() << ", expected " << n;
    std::vector<bool> seen(static_cast<std::size_t>(n), false);
    for (std::size_t i = 0; i < order.size(); ++i) {
        const int32_t v = order[i];
        if (v < 0 || v >= n) return ::testing::AssertionFailure() << "order[" << i << "] = " << v << " out of [0, " << n << ")";
        if (seen[static_cast<std::size_t>(v)]) return ::testing::AssertionFailure() << "order[" << i << "] = " << v << " repeats";
        seen[static_cast<std::size_t>(v)] = true;
    }
    return ::testing::AssertionSuccess();
}

TEST(EpochOrder, IsAPermutation) {
    for (int n : {1, 2, 7, 1000}) {
        for (uint64_t epoch : {uint64_t{0}, uint64_t{1}, uint64_t{12345}, ~uint64_t{0}}) {
            EXPECT_TRUE(is_permutation_of_iota(cumnist::epoch_order(n, 42, epoch), n)) << "n " << n << " epoch " << epoch;
        }
    }
    EXPECT_TRUE(cumnist::epoch_order(0, 42, 0).empty());
    EXPECT_EQ(cumnist::epoch_order(1, 7, 3), (std::vector<int32_t>{0}));
}

TEST(EpochOrder, SameSeedAndEpochSameOrder) {
    for (int n : {2, 7, 1000}) {
        EXPECT_EQ(cumnist::epoch_order(n, 1234, 5), cumnist::epoch_order(n, 1234, 5)) << "n " << n;
    }
    // Independent of what ran before: epoch 9 alone equals epoch 9 after epochs 0..8.
    const std::vector<int32_t> alone = cumnist::epoch_order(1000, 99, 9);
    for (uint64_t e = 0; e < 9; ++e) (void)cumnist::epoch_order(1000, 99, e);
    EXPECT_EQ(cumnist::epoch_order(1000, 99, 9), alone);
}

TEST(EpochOrder, DifferentEpochOrSeedDifferentOrder) {
    const std::vector<int32_t> base = cumnist::epoch_order(1000, 1234, 0);
    EXPECT_NE(cumnist::epoch_order(1000, 1234, 1), base);
    EXPECT_NE(cumnist::epoch_order(1000, 1235, 0), base);
    EXPECT_NE(cumnist::epoch_order(1000, uint64_t{1234} | (uint64_t{1} << 40), 0), base) << "high seed bits ignored";
    EXPECT_NE(cumnist::epoch_order(1000, 1234, uint64_t{1} << 40), base) << "high epoch bits ignored";
    std::vector<int32_t> identity(1000);
    std::iota(identity.begin(), identity.end(), 0);
    EXPECT_NE(base, identity);
}

TEST(EpochOrder, RoughlyUniform) {
    // Over 7000 epochs with n = 7, each value lands first (and last) about 1000 times; the
    // standard deviation is about 29, so (850, 1150) is a loose, deterministic bound. Sattolo's
    // variant (j < i) would never leave the last element in place.
    constexpr int n = 7, epochs = 7000;
    std::vector<int> first(n, 0), last(n, 0);
    int last_fixed = 0;
    std::set<std::vector<int32_t>> distinct;
    for (int e = 0; e < epochs; ++e) {
        const std::vector<int32_t> order = cumnist::epoch_order(n, 2024, static_cast<uint64_t>(e));
        ++first[static_cast<std::size_t>(order.front())];
        ++last[static_cast<std::size_t>(order.back())];
        last_fixed += order.back() == n - 1;
        distinct.insert(order);
    }
    for (int v = 0; v < n; ++v) {
        EXPECT_GT(first[static_cast<std::size_t>(v)], 850) << "value " << v << " first";
        EXPECT_LT(first[static_cast<std::size_t>(v)], 1150) << "value " << v << " first";
        EXPECT_GT(last[static_cast<std::size_t>(v)], 850) << "value " << v << " last";
        EXPECT_LT(last[static_cast<std::size_t>(v)], 1150) << "value " << v << " last";
    }
    EXPECT_GT(last_fixed, 0);
    // 7000 draws from 5040 equally likely permutations give 5040 · (1 − e^(−7000/5040)) ≈ 3783
    // distinct ones.
    EXPECT_GT(distinct.size(), 3650u) << "of the 5040 permutations of 7";
    EXPECT_LT(distinct.size(), 3920u) << "of the 5040 permutations of 7";

    // n = 2: both orders occur.
    std::set<std::vector<int32_t>> two;
    for (uint64_t e = 0; e < 64; ++e) two.insert(cumnist::epoch_order(2, 5, e));
    EXPECT_EQ(two.size(), 2u);
}

// ----------------------------------------------------------------------------------------------
// The real data, when scripts/fetch_data.sh has brought it

// The first of $CUMNIST_DATA, default_data_dir() and ~/.cache/cumnist whose <dataset>/ folder has
// the training images, raw or gzip-compressed; empty when none has.
std::string find_real_data(const std::string& dataset) {
    std::vector<std::string> dirs;
    if (const char* env = std::getenv("CUMNIST_DATA"); env && *env) dirs.emplace_back(env);
    dirs.push_back(cumnist::default_data_dir());
    if (const char* home = std::getenv("HOME"); home && *home) dirs.push_back(std::string(home) + "/.cache/cumnist");
    for (const std::string& dir : dirs) {
        const std::string base = dir + "/" + dataset + "/train-images-idx3-ubyte";
        std::error_code ec;
        if (fs::is_regular_file(base, ec) || fs::is_regular_file(base + ".gz", ec)) return dir;
    }
    return {};
}

TEST(RealData, MnistTrainAndTest) {
    const std::string dir = find_real_data("mnist");
    if (dir.empty()) GTEST_SKIP() << "real MNIST not found under $CUMNIST_DATA or ~/.cache/cumnist: run scripts/fetch_data.sh";
    const cumnist::Dataset train = cumnist::load_dataset(dir, "mnist", cumnist::Split::Train);
    EXPECT_EQ(train.n, 60000);
    EXPECT_EQ(train.rows, 28);
    EXPECT_EQ(train.cols, 28);
    ASSERT_EQ(train.images.size(), std::size_t{60000} * 28 * 28);
    ASSERT_EQ(train.labels.size(), 60000u);
    EXPECT_EQ(train.labels[0], 5) << "the first MNIST training digit is a 5";
    // The well-known class counts of the training split.
    const int expected_counts[10] = {5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949};
    int counts[10] = {};
    for (uint8_t l : train.labels) ++counts[l];
    for (int c = 0; c < 10; ++c) EXPECT_EQ(counts[c], expected_counts[c]) << "class " << c;
    EXPECT_EQ(*std::max_element(train.images.begin(), train.images.end()), 255);

    const cumnist::Dataset test = cumnist::load_dataset(dir, "mnist", cumnist::Split::Test);
    EXPECT_EQ(test.n, 10000);
    EXPECT_EQ(test.rows, 28);
    EXPECT_EQ(test.cols, 28);
    ASSERT_EQ(test.labels.size(), 10000u);
    EXPECT_EQ(test.labels[0], 7) << "the first MNIST test digit is a 7";
}

TEST(RealData, FashionTrain) {
    const std::string dir = find_real_data("fashion");
    if (dir.empty())
        GTEST_SKIP() << "real Fashion-MNIST not found under $CUMNIST_DATA or ~/.cache/cumnist: run scripts/fetch_data.sh";
    const cumnist::Dataset train = cumnist::load_dataset(dir, "fashion", cumnist::Split::Train);
    EXPECT_EQ(train.n, 60000);
    EXPECT_EQ(train.rows, 28);
    EXPECT_EQ(train.cols, 28);
    ASSERT_EQ(train.labels.size(), 60000u);
    EXPECT_EQ(train.labels[0], 9) << "the first Fashion-MNIST training item is an ankle boot";
    // Fashion-MNIST is balanced: 6000 of each class.
    int counts[10] = {};
    for (uint8_t l : train.labels) ++counts[l];
    for (int c = 0; c < 10; ++c) EXPECT_EQ(counts[c], 6000) << "class " << c;
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// split_validation

namespace {
// n samples of 2 x 2 pixels; sample i has label labels[i] and every pixel equal to i % 256, so a
// sample can be traced through the split.
cumnist::Dataset labelled(const std::vector<uint8_t>& labels) {
    cumnist::Dataset ds;
    ds.name = "synthetic";
    ds.n = static_cast<int>(labels.size());
    ds.rows = ds.cols = 2;
    ds.labels = labels;
    for (std::size_t i = 0; i < labels.size(); ++i) ds.images.insert(ds.images.end(), 4, static_cast<uint8_t>(i % 256));
    return ds;
}
}  // namespace

TEST(ValidationSplit, StratifiedCountsPerClass) {
    // Class c has 10·(c + 1) samples, interleaved.
    std::vector<uint8_t> labels;
    for (int c = 0; c < 10; ++c)
        for (int k = 0; k < 10 * (c + 1); ++k) labels.push_back(static_cast<uint8_t>(c));
    std::mt19937 shuffle(5);
    std::shuffle(labels.begin(), labels.end(), shuffle);
    const cumnist::Dataset ds = labelled(labels);
    const cumnist::ValidationSplit s = cumnist::split_validation(ds, 0.25, 42);
    std::vector<int> held(10, 0), kept(10, 0);
    for (uint8_t l : s.validation.labels) ++held[l];
    for (uint8_t l : s.train.labels) ++kept[l];
    for (int c = 0; c < 10; ++c) {
        const int count = 10 * (c + 1);
        EXPECT_EQ(held[c], static_cast<int>(std::lround(0.25 * count))) << "class " << c;  // 2.5 rounds away: 3
        EXPECT_EQ(held[c] + kept[c], count) << "class " << c;
    }
    EXPECT_EQ(s.validation.n + s.train.n, ds.n);
    EXPECT_EQ(s.validation.n, static_cast<int>(s.validation_indices.size()));
}

TEST(ValidationSplit, DisjointCoveringInOrderAndCarryingTheirImages) {
    std::vector<uint8_t> labels(300);
    for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<uint8_t>((i * 7) % 10);
    const cumnist::Dataset ds = labelled(labels);
    const cumnist::ValidationSplit s = cumnist::split_validation(ds, 0.1, 9);
    // Every sample in exactly one part, each part in the data set's order, with its own pixels and label.
    std::vector<int> seen(300, 0);
    std::vector<int32_t> train_indices;
    std::set<int32_t> held(s.validation_indices.begin(), s.validation_indices.end());
    for (int i = 0; i < ds.n; ++i)
        if (!held.count(i)) train_indices.push_back(i);
    ASSERT_EQ(static_cast<int>(train_indices.size()), s.train.n);
    for (int k = 0; k < s.validation.n; ++k) {
        const int32_t i = s.validation_indices[k];
        if (k > 0) {
            EXPECT_LT(s.validation_indices[k - 1], i);
        }
        EXPECT_EQ(s.validation.labels[k], ds.labels[i]);
        EXPECT_EQ(s.validation.images[4 * k], static_cast<uint8_t>(i % 256));
        ++seen[i];
    }
    for (int k = 0; k < s.train.n; ++k) {
        const int32_t i = train_indices[k];
        EXPECT_EQ(s.train.labels[k], ds.labels[i]);
        EXPECT_EQ(s.train.images[4 * k + 3], static_cast<uint8_t>(i % 256));
        ++seen[i];
    }
    for (int i = 0; i < ds.n; ++i) EXPECT_EQ(seen[i], 1) << "sample " << i;
    EXPECT_EQ(s.validation.n, 30);
}

TEST(ValidationSplit, SeededAndDeterministic) {
    std::vector<uint8_t> labels(1000);
    for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<uint8_t>(i % 10);
    const cumnist::Dataset ds = labelled(labels);
    const auto a = cumnist::split_validation(ds, 0.2, 42).validation_indices;
    EXPECT_EQ(cumnist::split_validation(ds, 0.2, 42).validation_indices, a);
    EXPECT_NE(cumnist::split_validation(ds, 0.2, 43).validation_indices, a);
    // Not simply the first samples of each class.
    std::vector<int32_t> first;
    for (int i = 0; i < 200; ++i) first.push_back(i);
    EXPECT_NE(a, first);
}

TEST(ValidationSplit, RefusesBadFractionsAndEmptyParts) {
    const cumnist::Dataset ds = labelled({0, 1, 2, 3});
    for (double f : {0.0, 1.0, -0.1, 1.5, std::nan("")})
        EXPECT_CUMNIST_ERROR(cumnist::split_validation(ds, f, 1), "--validation-split must be a fraction in (0, 1)");
    // One sample per class: 10 % of each rounds to none.
    EXPECT_CUMNIST_ERROR(cumnist::split_validation(ds, 0.1, 1), "leaves 0 for validation and 4 for training");
}
