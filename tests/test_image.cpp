// Image input and output: decoding every supported format and rejecting bad files with one line
// naming the file; MNIST-style preprocessing (inversion, crop, 20 × 20 fit with the aspect ratio,
// centre of mass at the centre); prediction on real MNIST test digits redrawn at other sizes,
// polarities, colours and formats (the same digit as the original 28 × 28 must come out); PNG
// pictures decodable with the dimensions the layout promises; `cumnist predict` on bad files and
// `cumnist show`, run as a user runs them.
#include <fmt/ranges.h>
#include <omp.h>
#include <stb_image_write.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <random>

#include <nlohmann/json.hpp>

#include "cumnist/checkpoint.h"
#include "cumnist/data.h"
#include "cumnist/error.h"
#include "cumnist/image.h"
#include "cumnist/predict.h"
#include "cumnist/trainer.h"
#include "test_support.h"

namespace cumnist {
namespace {

namespace fs = std::filesystem;

// A folder of its own for each test program run, removed at the end.
class TempDir {
public:
    TempDir() : m_path(fs::temp_directory_path() / fmt::format("cumnist_test_image_{}", ::getpid())) {
        fs::create_directories(m_path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(m_path, ec);
    }
    std::string file(const std::string& name) const { return (m_path / name).string(); }

private:
    fs::path m_path;
};

const TempDir& temp() {
    static TempDir dir;
    return dir;
}

std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

Image gray(int w, int h, uint8_t value) { return Image{w, h, 1, std::vector<uint8_t>(static_cast<std::size_t>(w) * h, value)}; }

void fill(Image& img, int x0, int y0, int w, int h, uint8_t value) {
    for (int y = y0; y < y0 + h; ++y)
        for (int x = x0; x < x0 + w; ++x)
            for (int c = 0; c < img.channels; ++c) img.pixels[(static_cast<std::size_t>(y) * img.width + x) * img.channels + c] = value;
}

std::vector<uint8_t> jpeg_of(const Image& img, int quality) {
    std::vector<uint8_t> out;
    auto append = [](void* ctx, void* data, int size) {
        auto* v = static_cast<std::vector<uint8_t>*>(ctx);
        v->insert(v->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
    };
    EXPECT_NE(stbi_write_jpg_to_func(append, &out, img.width, img.height, img.channels, img.pixels.data(), quality), 0);
    return out;
}

std::vector<uint8_t> bmp_of(const Image& img) {
    std::vector<uint8_t> out;
    auto append = [](void* ctx, void* data, int size) {
        auto* v = static_cast<std::vector<uint8_t>*>(ctx);
        v->insert(v->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
    };
    EXPECT_NE(stbi_write_bmp_to_func(append, &out, img.width, img.height, img.channels, img.pixels.data()), 0);
    return out;
}

// A bottom-up BMP with a BITMAPINFOHEADER rewritten top-down: rows reversed, height negated.
std::vector<uint8_t> top_down_bmp(const std::vector<uint8_t>& bmp) {
    auto le32 = [&](std::size_t at) {
        return static_cast<uint32_t>(bmp[at]) | static_cast<uint32_t>(bmp[at + 1]) << 8 |
               static_cast<uint32_t>(bmp[at + 2]) << 16 | static_cast<uint32_t>(bmp[at + 3]) << 24;
    };
    EXPECT_EQ(le32(14), 40u) << "a BITMAPINFOHEADER";
    const uint32_t offset = le32(10), width = le32(18), height = le32(22);
    const uint32_t bpp = static_cast<uint32_t>(bmp[28]) | static_cast<uint32_t>(bmp[29]) << 8;
    const std::size_t row = (width * bpp + 31) / 32 * 4;
    EXPECT_GE(bmp.size(), offset + row * height);
    std::vector<uint8_t> out(bmp.begin(), bmp.begin() + offset);
    for (uint32_t r = height; r-- > 0;)
        out.insert(out.end(), bmp.begin() + static_cast<std::ptrdiff_t>(offset + r * row),
                   bmp.begin() + static_cast<std::ptrdiff_t>(offset + (r + 1) * row));
    const uint32_t negative = static_cast<uint32_t>(-static_cast<int32_t>(height));
    for (int i = 0; i < 4; ++i) out[22 + i] = static_cast<uint8_t>(negative >> (8 * i));
    return out;
}

// Expects `f` to throw cumnist::Error whose message is one line naming `name` and containing `what`.
template <class F>
void expect_error(F&& f, const std::string& name, const std::string& what) {
    try {
        f();
        ADD_FAILURE() << "no error for " << name << " (expected '" << what << "')";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("'" + name + "'"), std::string::npos) << msg;
        EXPECT_NE(msg.find(what), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
}

// ---- Decoding ----------------------------------------------------------------------------------

TEST(ImageIo, PngRoundTripsEveryChannelCount) {
    for (int channels = 1; channels <= 4; ++channels) {
        Image img{13, 7, channels, cumnist_test::uniform_bytes(13 * 7 * channels, 0, 255, 17u + channels)};
        const std::vector<uint8_t> png = encode_png(img);
        const Image back = decode_image("mem.png", png.data(), png.size());
        EXPECT_EQ(back.width, 13);
        EXPECT_EQ(back.height, 7);
        EXPECT_EQ(back.channels, channels);
        EXPECT_EQ(back.pixels, img.pixels) << channels << " channels";
    }
}

TEST(ImageIo, WritePngGoesThroughATemporaryFile) {
    const std::string path = temp().file("written.png");
    Image img{5, 3, 1, {0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 255}};
    write_png(path, img);
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    const Image back = read_image(path);
    EXPECT_EQ(back.width, 5);
    EXPECT_EQ(back.height, 3);
    EXPECT_EQ(back.pixels, img.pixels);
    expect_error([&] { write_png(temp().file("no/such/folder/x.png"), img); }, temp().file("no/such/folder/x.png.tmp"),
                 "cannot write");
}

TEST(ImageIo, ReadsJpegAndBmp) {
    Image img = gray(40, 24, 0);
    for (int y = 0; y < 24; ++y)
        for (int x = 0; x < 40; ++x) img.pixels[y * 40 + x] = static_cast<uint8_t>(x * 6);  // a smooth ramp
    const std::vector<uint8_t> jpg = jpeg_of(img, 95);
    const Image j = decode_image("ramp.jpg", jpg.data(), jpg.size());
    ASSERT_EQ(j.width, 40);
    ASSERT_EQ(j.height, 24);
    ASSERT_TRUE(j.channels == 1 || j.channels == 3) << j.channels;  // stb_image_write stores gray as YCbCr
    for (std::size_t i = 0; i < img.pixels.size(); ++i)
        ASSERT_NEAR(j.pixels[i * j.channels], img.pixels[i], 8) << "JPEG at quality 95 is close, not exact: pixel " << i;

    Image rgb{7, 5, 3, cumnist_test::uniform_bytes(7 * 5 * 3, 0, 255, 3)};
    const std::vector<uint8_t> bmp = bmp_of(rgb);
    const Image b = decode_image("x.bmp", bmp.data(), bmp.size());
    EXPECT_EQ(b.width, 7);
    EXPECT_EQ(b.height, 5);
    EXPECT_EQ(b.channels, 3);
    EXPECT_EQ(b.pixels, rgb.pixels);

    // The same picture stored top-down (negative height, first row first) reads the same.
    const std::vector<uint8_t> top_down = top_down_bmp(bmp);
    const Image t = decode_image("top-down.bmp", top_down.data(), top_down.size());
    EXPECT_EQ(t.width, 7);
    EXPECT_EQ(t.height, 5);
    EXPECT_EQ(t.pixels, rgb.pixels);
}

TEST(ImageIo, ReadsEveryNetpbmVariant) {
    struct Case {
        const char* name;
        std::string bytes;
        int channels;
        std::vector<uint8_t> want;
    };
    const std::vector<Case> cases = {
        {"p1.pbm", "P1\n# comment\n3 2\n0 1 0\n101", 1, {255, 0, 255, 0, 255, 0}},
        {"p2.pgm", "P2\n3 2\n# max\n4\n0 1 2\n3 4 4\n", 1, {0, 64, 128, 191, 255, 255}},
        {"p3.ppm", "P3 1 2 255\n1 2 3  4 5 6\n", 3, {1, 2, 3, 4, 5, 6}},
        {"p4.pbm", std::string("P4\n3 2\n") + '\x40' + '\xA0', 1, {255, 0, 255, 0, 255, 0}},
        {"p5.pgm", std::string("P5\n3 2\n255\n") + std::string("\x00\x10\x20\x30\x40\xff", 6), 1, {0, 16, 32, 48, 64, 255}},
        {"p5_16.pgm", std::string("P5 2 1 65535\n") + std::string("\xff\xff\x80\x00", 4), 1, {255, 128}},
        {"p6.ppm", std::string("P6\n1 1\n255\n") + "\x0a\x14\x1e", 3, {10, 20, 30}},
    };
    for (const Case& c : cases) {
        const Image img = decode_image(c.name, reinterpret_cast<const uint8_t*>(c.bytes.data()), c.bytes.size());
        EXPECT_EQ(img.channels, c.channels) << c.name;
        EXPECT_EQ(img.pixels, c.want) << c.name;
    }
}

TEST(ImageIo, RejectsBadFilesWithOneLineNamingTheFile) {
    const Image digit = [] {
        Image d = gray(30, 30, 0);
        fill(d, 10, 5, 8, 20, 255);
        return d;
    }();
    const std::vector<uint8_t> png = encode_png(digit);
    const std::vector<uint8_t> bmp = bmp_of(digit);
    const std::vector<uint8_t> jpg = jpeg_of(digit, 90);
    std::vector<uint8_t> huge_png(png.begin(), png.begin() + 33);  // signature + IHDR claiming 100000 × 100000
    huge_png[16] = 0, huge_png[17] = 1, huge_png[18] = 0x86, huge_png[19] = 0xa0;
    huge_png[20] = 0, huge_png[21] = 1, huge_png[22] = 0x86, huge_png[23] = 0xa0;
    struct Case {
        const char* name;
        std::vector<uint8_t> bytes;
        const char* what;
    };
    const std::vector<Case> cases = {
        {"text.png", bytes_of("hello, not an image\n"), "not an image (it starts with bytes 68 65 6c 6c"},
        {"anim.gif", bytes_of("GIF89a\x01\x00\x01\x00"), "a GIF image; expected a PNG, JPEG, BMP or PGM"},
        {"half.png", {png.begin(), png.begin() + static_cast<std::ptrdiff_t>(png.size() / 2)}, "corrupt, truncated"},
        {"huge.png", huge_png, "100000 x 100000 pixels, expected 1 to 64 megapixels"},
        {"half.bmp", {bmp.begin(), bmp.begin() + static_cast<std::ptrdiff_t>(bmp.size() / 2)}, "truncated BMP"},
        {"tiny.bmp", bytes_of("BM1234"), "truncated BMP"},
        {"half.jpg", {jpg.begin(), jpg.begin() + static_cast<std::ptrdiff_t>(jpg.size() * 9 / 10)},
         "truncated JPEG: "},
        {"short.pgm", bytes_of(std::string("P5\n10 10\n255\n") + std::string(20, '\0')), "truncated netpbm image"},
        {"short_ascii.pgm", bytes_of("P2\n5 5\n9\n0 0 0 0 0\n0 0 9\n"), "truncated netpbm image"},
        {"over.pgm", bytes_of("P2\n2 1\n9\n3 12\n"), "sample 2 is 12, above the maximum value 9"},
        {"letters.pgm", bytes_of("P2\n5 x5\n9\n"), "netpbm height is missing or not a number"},
        {"claims.pgm", bytes_of("P2\n60000 60000\n255\n1 2 3\n"), "60000 x 60000 pixels, expected 1 to 64 megapixels"},
        {"zero.pgm", bytes_of("P5\n0 3\n255\n"), "0 x 3 pixels"},
        {"maxval.pgm", bytes_of("P5\n1 1\n70000\nab"), "maximum value 70000"},
    };
    for (const Case& c : cases)
        expect_error([&] { decode_image(c.name, c.bytes.data(), c.bytes.size()); }, c.name, c.what);

    // Through read_image: the file system's answers.
    const std::string empty = temp().file("empty.png"), dir = temp().file("folder.png"), missing = temp().file("missing.png");
    write_bytes(empty, {});
    fs::create_directories(dir);
    expect_error([&] { read_image(empty); }, empty, "empty file (0 bytes)");
    expect_error([&] { read_image(dir); }, dir, "is a directory");
    expect_error([&] { read_image(missing); }, missing, "No such file or directory");
    if (fs::exists("/dev/null")) expect_error([] { read_image("/dev/null"); }, "/dev/null", "not a regular file");
    const std::string text = temp().file("notes.jpg");
    write_bytes(text, bytes_of("just some text"));
    expect_error([&] { read_image(text); }, text, "not an image");
}

// Damaged files (random bytes overwritten, or cut short) must decode or throw cumnist::Error: never
// crash, hang or throw anything else. (The sanitizer build runs this under ASan and UBSan.)
TEST(ImageIo, DamagedFilesDecodeOrThrowError) {
    Image digit = gray(37, 23, 0);
    fill(digit, 10, 4, 9, 15, 255);
    Image rgb{20, 9, 3, cumnist_test::uniform_bytes(20 * 9 * 3, 0, 255, 8)};
    std::string pgm = "P5\n37 23\n255\n", ascii = "P2\n4 3\n255\n";
    pgm.append(digit.pixels.begin(), digit.pixels.end());
    for (int i = 0; i < 12; ++i) ascii += fmt::format("{} ", i * 20);
    const std::vector<std::vector<uint8_t>> originals = {encode_png(digit), encode_png(rgb), jpeg_of(digit, 80),
                                                         bmp_of(rgb), bytes_of(pgm), bytes_of(ascii)};
    std::mt19937 rng(123);
    int decoded = 0, rejected = 0;
    for (const std::vector<uint8_t>& original : originals)
        for (int trial = 0; trial < 400; ++trial) {
            std::vector<uint8_t> b = original;
            const int flips = 1 + static_cast<int>(rng() % 8);
            for (int k = 0; k < flips; ++k) b[rng() % b.size()] = static_cast<uint8_t>(rng());
            if (trial % 4 == 0) b.resize(rng() % b.size());
            try {
                const Image img = decode_image("damaged", b.data(), b.size());
                ASSERT_EQ(img.pixels.size(), static_cast<std::size_t>(img.width) * img.height * img.channels);
                ++decoded;
            } catch (const Error&) {
                ++rejected;
            }
        }
    std::printf("%d damaged files decoded, %d rejected\n", decoded, rejected);
    EXPECT_GT(rejected, 0);
}

// ---- Preprocessing -----------------------------------------------------------------------------

struct Moments {
    double mass = 0, cx = 0, cy = 0;
    int x0 = kMnistSide, y0 = kMnistSide, x1 = -1, y1 = -1;  // bounding box of non-zero pixels
};

Moments moments(const std::vector<uint8_t>& d) {
    Moments m;
    for (int y = 0; y < kMnistSide; ++y)
        for (int x = 0; x < kMnistSide; ++x) {
            const double v = d[y * kMnistSide + x];
            m.mass += v, m.cx += v * x, m.cy += v * y;
            if (v > 0) m.x0 = std::min(m.x0, x), m.x1 = std::max(m.x1, x), m.y0 = std::min(m.y0, y), m.y1 = std::max(m.y1, y);
        }
    m.cx /= m.mass, m.cy /= m.mass;
    return m;
}

TEST(Preprocess, WideBarIsInvertedScaledToTwentyAndCentred) {
    // A black 200 × 40 bar, off-centre on a 300 × 100 white page.
    Image page = gray(300, 100, 255);
    fill(page, 20, 50, 200, 40, 0);
    PreprocessInfo info;
    const std::vector<uint8_t> d = preprocess_digit(page, "bar.png", &info);
    ASSERT_EQ(d.size(), 784u);
    EXPECT_TRUE(info.inverted);
    EXPECT_EQ(info.crop_x, 20);
    EXPECT_EQ(info.crop_y, 50);
    EXPECT_EQ(info.crop_width, 200);
    EXPECT_EQ(info.crop_height, 40);
    EXPECT_EQ(info.box_width, 20);
    EXPECT_EQ(info.box_height, 4);  // 40 · 20/200: the aspect ratio kept
    const Moments m = moments(d);
    EXPECT_EQ(m.x1 - m.x0 + 1, 20);
    EXPECT_LE(m.y1 - m.y0 + 1, 6);  // 4 rows, plus the anti-aliasing filter's fringe at most
    EXPECT_NEAR(m.cx, 14.0, 0.5);   // centre of mass on MNIST's (14, 14), within the whole-pixel shift
    EXPECT_NEAR(m.cy, 14.0, 0.5);
    EXPECT_EQ(*std::max_element(d.begin(), d.end()), 255);
    EXPECT_EQ(d[0], 0);
}

TEST(Preprocess, FashionFramingFillsTheFieldAndCentresTheBox) {
    Image page = gray(300, 100, 255);
    fill(page, 20, 50, 200, 40, 0);
    PreprocessInfo info;
    const Moments m = moments(preprocess_digit(page, "belt.png", &info, Framing::Fashion));
    EXPECT_EQ(info.box_width, 28);
    EXPECT_EQ(info.box_height, 6);  // 40 · 28/200 = 5.6, rounded
    EXPECT_EQ(info.offset_x, 0);
    EXPECT_EQ(info.offset_y, 11);
    EXPECT_EQ(m.x1 - m.x0 + 1, 28);
    EXPECT_EQ(framing_for("fashion"), Framing::Fashion);
    EXPECT_EQ(framing_for("mnist"), Framing::Mnist);
}

TEST(Preprocess, TallStrokeKeepsItsAspectRatio) {
    Image img = gray(100, 300, 0);  // white on black: no inversion
    fill(img, 60, 30, 20, 160, 255);
    PreprocessInfo info;
    const Moments m = moments(preprocess_digit(img, "one.png", &info));
    EXPECT_FALSE(info.inverted);
    EXPECT_EQ(info.box_height, 20);
    EXPECT_EQ(info.box_width, 3);  // 20 · 20/160 = 2.5, rounded
    EXPECT_EQ(m.y1 - m.y0 + 1, 20);
    EXPECT_NEAR(m.cx, 14.0, 0.5);
    EXPECT_NEAR(m.cy, 14.0, 0.5);
}

// An "L" shape in a given polarity and colour: ink and paper as RGB.
Image letter_l(int w, int h, const uint8_t ink[3], const uint8_t paper[3]) {
    Image img{w, h, 3, std::vector<uint8_t>(static_cast<std::size_t>(w) * h * 3)};
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            const bool on = (x >= w / 4 && x < w / 4 + w / 8 && y >= h / 5 && y < 4 * h / 5) ||
                            (y >= 4 * h / 5 - h / 10 && y < 4 * h / 5 && x >= w / 4 && x < 3 * w / 4);
            const uint8_t* c = on ? ink : paper;
            std::copy(c, c + 3, &img.pixels[(static_cast<std::size_t>(y) * w + x) * 3]);
        }
    return img;
}

TEST(Preprocess, PolarityColourAndTransparencyGiveTheSameDigit) {
    const uint8_t white[3] = {255, 255, 255}, black[3] = {0, 0, 0}, blue[3] = {20, 30, 160}, yellow[3] = {250, 240, 170};
    const std::vector<uint8_t> base = preprocess_digit(letter_l(160, 160, white, black), "light-on-dark");
    PreprocessInfo info;
    EXPECT_EQ(preprocess_digit(letter_l(160, 160, black, white), "dark-on-light", &info), base);
    EXPECT_TRUE(info.inverted);
    EXPECT_EQ(preprocess_digit(letter_l(160, 160, blue, yellow), "blue-on-yellow", &info), base);
    EXPECT_TRUE(info.inverted);
    // Black ink drawn on a transparent canvas (RGBA, colour 0 everywhere, the shape in alpha only).
    const Image l = letter_l(160, 160, white, black);
    Image rgba{160, 160, 4, std::vector<uint8_t>(160 * 160 * 4, 0)};
    for (std::size_t i = 0; i < 160 * 160; ++i) rgba.pixels[i * 4 + 3] = l.pixels[i * 3];
    EXPECT_EQ(preprocess_digit(rgba, "transparent-canvas", &info), base);
    EXPECT_TRUE(info.inverted);
}

TEST(Preprocess, NoiseOnThePaperIsNotInk) {
    Image page = gray(200, 200, 230);
    std::vector<uint8_t> noise = cumnist_test::uniform_bytes(page.pixels.size(), 0, 12, 5);
    for (std::size_t i = 0; i < noise.size(); ++i) page.pixels[i] = static_cast<uint8_t>(page.pixels[i] + noise[i] - 6);
    fill(page, 90, 40, 20, 120, 30);
    PreprocessInfo info;
    preprocess_digit(page, "noisy.png", &info);
    EXPECT_EQ(info.crop_x, 90);
    EXPECT_EQ(info.crop_y, 40);
    EXPECT_EQ(info.crop_width, 20);
    EXPECT_EQ(info.crop_height, 120);
}

TEST(Preprocess, RejectsImagesWithoutADigit) {
    expect_error([] { preprocess_digit(gray(50, 40, 255), "white.png"); }, "white.png",
                 "no digit found: every pixel has grey level 255");
    Image faint = gray(40, 40, 250);
    fill(faint, 10, 10, 5, 20, 240);
    expect_error([&] { preprocess_digit(faint, "faint.png"); }, "faint.png", "ink and background differ by 10 grey levels");
    Image clear{20, 20, 4, std::vector<uint8_t>(20 * 20 * 4, 0)};
    expect_error([&] { preprocess_digit(clear, "clear.png"); }, "clear.png", "fully transparent");
    // A single pixel is a (tiny) digit, not an error.
    Image dot = gray(9, 9, 0);
    dot.pixels[40] = 255;
    const std::vector<uint8_t> d = preprocess_digit(dot, "dot.png");
    EXPECT_GT(std::count_if(d.begin(), d.end(), [](uint8_t v) { return v > 0; }), 0);
}

// ---- Prediction on real MNIST digits, redrawn ----------------------------------------------

// A digit as a float image in [0, 1], enlarged by `scale` with the resampling filter, on a
// `width` × `height` canvas at (x, y); `invert` gives dark ink on white.
Image redraw(const uint8_t* digit, int scale, int width, int height, int x, int y, bool invert, int channels) {
    std::vector<float> src(784);
    for (int i = 0; i < 784; ++i) src[i] = digit[i] / 255.0f;
    const int side = kMnistSide * scale;
    const std::vector<float> big = resize_gray(src, kMnistSide, kMnistSide, side, side);
    Image img{width, height, channels, std::vector<uint8_t>(static_cast<std::size_t>(width) * height * channels, 0)};
    const float ink[3] = {0.08f, 0.12f, 0.6f}, paper[3] = {0.98f, 0.94f, 0.7f};  // blue on yellow, for colour
    for (int r = 0; r < height; ++r)
        for (int c = 0; c < width; ++c) {
            const int br = r - y, bc = c - x;
            float v = br >= 0 && bc >= 0 && br < side && bc < side ? big[static_cast<std::size_t>(br) * side + bc] : 0.0f;
            for (int k = 0; k < channels; ++k) {
                const float out = channels == 3 ? paper[k] + (ink[k] - paper[k]) * v : invert ? 1.0f - v : v;
                img.pixels[(static_cast<std::size_t>(r) * width + c) * channels + k] =
                    static_cast<uint8_t>(std::lround(255.0f * out));
            }
        }
    return img;
}

class MnistPrediction : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        try {
            s_train = load_dataset(default_data_dir(), "mnist", Split::Train);
            s_test = load_dataset(default_data_dir(), "mnist", Split::Test);
        } catch (const Error& e) {
            s_missing = e.what();
        }
    }
    // One epoch of a small model (784-64-10) on the CPU, trained on first use: ~95 % test accuracy.
    static Model& model() {
        if (!s_trainer) {
            MlpConfig model;
            model.hidden = {64};
            TrainConfig t;
            t.epochs = 1;
            t.device = Device::Cpu;
            s_trainer = std::make_unique<Trainer>(model, OptimizerConfig{}, t, s_train);
            s_trainer->train_epoch(1, nullptr);
        }
        return s_trainer->model();
    }
    static void TearDownTestSuite() { s_trainer.reset(); }
    void SetUp() override {
        if (!s_missing.empty()) GTEST_SKIP() << "real MNIST is needed (run scripts/fetch_data.sh): " << s_missing;
    }

    static Dataset s_train, s_test;
    static std::unique_ptr<Trainer> s_trainer;
    static std::string s_missing;
};
Dataset MnistPrediction::s_train, MnistPrediction::s_test;
std::unique_ptr<Trainer> MnistPrediction::s_trainer;
std::string MnistPrediction::s_missing;

TEST_F(MnistPrediction, ProbabilitiesAndRanking) {
    const int n = 300;
    const std::vector<uint8_t> images(s_test.images.begin(), s_test.images.begin() + n * 784);
    const std::vector<Prediction> p = predict(model(), images, n);
    ASSERT_EQ(p.size(), static_cast<std::size_t>(n));
    int correct = 0;
    for (int i = 0; i < n; ++i) {
        ASSERT_EQ(p[i].probabilities.size(), 10u);
        EXPECT_NEAR(std::accumulate(p[i].probabilities.begin(), p[i].probabilities.end(), 0.0), 1.0, 1e-5);
        for (int r = 1; r < 10; ++r) EXPECT_GE(p[i].probabilities[p[i].ranking[r - 1]], p[i].probabilities[p[i].ranking[r]]);
        correct += p[i].top() == s_test.labels[i];
    }
    EXPECT_GE(correct, n * 9 / 10) << "a one-epoch 784-64-10 model gets ~95 % right";
    EXPECT_THROW(predict(model(), images, n + 1), Error);
}

// Test digits written to files at other sizes, polarities, colours and formats, read back and
// preprocessed, must be classified as the same digit as the original 28 × 28.
TEST_F(MnistPrediction, RedrawnDigitsAreClassifiedAsTheOriginal) {
    const int n = 200;
    const std::vector<uint8_t> originals(s_test.images.begin(), s_test.images.begin() + n * 784);
    const std::vector<Prediction> want = predict(model(), originals, n);

    struct Variant {
        const char* name;
        const char* ext;
        int scale, width, height, x, y;
        bool invert;
        int channels;
    };
    const std::vector<Variant> variants = {
        {"200x150, dark on white, PNG", "png", 5, 200, 150, 45, 3, true, 1},
        {"28x28 as is, PNG", "png", 1, 28, 28, 0, 0, false, 1},
        {"28x28, dark on white, PGM", "pgm", 1, 28, 28, 0, 0, true, 1},
        {"80x90, light on black, BMP", "bmp", 2, 80, 90, 12, 20, false, 1},
        {"300x300, blue on yellow, JPEG", "jpg", 10, 300, 300, 8, 12, false, 3},
    };
    for (const Variant& v : variants) {
        std::vector<uint8_t> prepared;  // every redrawn digit, read back and preprocessed
        for (int i = 0; i < n; ++i) {
            const Image img = redraw(&originals[static_cast<std::size_t>(i) * 784], v.scale, v.width, v.height, v.x, v.y,
                                     v.invert, v.channels);
            const std::string path = temp().file(fmt::format("digit{}.{}", i, v.ext));
            if (std::string(v.ext) == "png") {
                write_png(path, img);
            } else if (std::string(v.ext) == "jpg") {
                write_bytes(path, jpeg_of(img, 90));
            } else if (std::string(v.ext) == "bmp") {
                write_bytes(path, bmp_of(img));
            } else {
                std::string pgm = fmt::format("P5\n{} {}\n255\n", img.width, img.height);
                pgm.append(img.pixels.begin(), img.pixels.end());
                write_bytes(path, bytes_of(pgm));
            }
            const Image back = read_image(path);
            ASSERT_EQ(back.width, v.width);
            ASSERT_EQ(back.height, v.height);
            const std::vector<uint8_t> d = preprocess_digit(back, path);
            prepared.insert(prepared.end(), d.begin(), d.end());
        }
        const std::vector<Prediction> got = predict(model(), prepared, n);
        int same = 0, same_confident = 0, confident = 0;
        std::string differ;
        for (int i = 0; i < n; ++i) {
            const bool agree = got[i].top() == want[i].top();
            same += agree;
            if (want[i].probabilities[want[i].top()] >= 0.9f) ++confident, same_confident += agree;
            if (!agree) differ += fmt::format(" #{} ({} -> {})", i, want[i].top(), got[i].top());
        }
        std::printf("%-32s %d/%d agree with the 28x28 original; confident ones %d/%d;%s\n", v.name, same, n, same_confident,
                    confident, differ.c_str());
        // Every digit the model is sure of on the original must come out the same; of the rest,
        // which sit near a decision boundary, resampling may move a few across it.
        EXPECT_EQ(same_confident, confident) << v.name << ":" << differ;
        EXPECT_GE(same, n * 97 / 100) << v.name << ":" << differ;
    }
}

// The original 28 × 28 digits barely change in preprocessing: they already are what it makes.
TEST_F(MnistPrediction, MnistDigitsAreAlmostFixedPoints) {
    double total = 0;
    for (int i = 0; i < 100; ++i) {
        const uint8_t* d = &s_test.images[static_cast<std::size_t>(i) * 784];
        const std::vector<uint8_t> p = preprocess_digit(Image{28, 28, 1, {d, d + 784}}, "mnist");
        const Moments m = moments(p);
        EXPECT_NEAR(m.cx, 14.0, 0.5) << i;
        EXPECT_NEAR(m.cy, 14.0, 0.5) << i;
        double diff = 0;
        for (int k = 0; k < 784; ++k) diff += std::abs(p[k] - d[k]);
        total += diff / 784;
    }
    std::printf("mean absolute change: %.1f grey levels per pixel\n", total / 100);
    EXPECT_LT(total / 100, 20.0);
}

// ---- Pictures --------------------------------------------------------------------------------

TEST(DigitGrid, PictureHasTheDimensionsOfItsLayout) {
    std::vector<DigitTile> tiles;
    for (int i = 0; i < 7; ++i) {
        DigitTile t;
        t.pixels.assign(784, static_cast<uint8_t>(i * 30));
        t.caption = {{fmt::format("Label: {}", i)}};
        tiles.push_back(t);
    }
    GridOptions o;
    o.columns = 3;
    // Cell: max(28 · 3, text width of "Label: 0" = (8 · 6 − 1) · 2 = 94) wide; one caption line
    // (10 · 2) + 2 · 2 above the 84 rows of the image.
    const int cell_w = 94, cell_h = 20 + 4 + 84;
    EXPECT_EQ(text_width("Label: 0", 2), 94);
    const std::string path = temp().file("grid.png");
    write_digit_grid(path, tiles, o);
    const Image back = read_image(path);
    EXPECT_EQ(back.width, 2 * 12 + 3 * cell_w + 2 * 16);
    EXPECT_EQ(back.height, 2 * 12 + 3 * cell_h + 2 * 16);
    EXPECT_EQ(back.channels, 3);
    // Tile 1's image (value 30) at its place: cell (1, 0), centred horizontally, under the caption.
    const int x = 12 + (cell_w + 16) + (cell_w - 84) / 2 + 40, y = 12 + 24 + 40;
    EXPECT_EQ(back.pixels[(static_cast<std::size_t>(y) * back.width + x) * 3], 30);
    EXPECT_EQ(back.pixels[0], 255);  // white background

    o.title = "a title";
    const Image titled = render_digit_grid(tiles, o);
    EXPECT_EQ(titled.height, back.height + 20 + 8);  // one text line plus half a gap
    EXPECT_EQ(titled.width, back.width);

    expect_error([] { write_digit_grid("none.png", {}); }, "none.png", "no images to draw");
}

TEST(DigitGrid, RejectsBadTilesAndLayouts) {
    DigitTile bad;
    bad.pixels.assign(100, 0);
    EXPECT_THROW(render_digit_grid({bad}), Error);
    DigitTile ok;
    ok.pixels.assign(784, 0);
    GridOptions o;
    o.columns = 0;
    EXPECT_THROW(render_digit_grid({ok}, o), Error);
    o.columns = 1;
    o.scale = 64;
    EXPECT_THROW(render_digit_grid(std::vector<DigitTile>(2000, ok), o), Error);  // over 100 megapixels
}

TEST(DigitGrid, MisclassifiedPictureDecodes) {
    Dataset ds;
    ds.name = "mnist test";
    ds.n = 30, ds.rows = 28, ds.cols = 28;
    ds.images = cumnist_test::uniform_bytes(30 * 784, 0, 255, 9);
    ds.labels.resize(30);
    for (int i = 0; i < 30; ++i) ds.labels[i] = static_cast<uint8_t>(i % 10);
    const std::vector<int> wrong = {3, 7, 11, 12, 20, 21, 22, 23, 24, 25, 26, 27};
    std::vector<int> predicted;
    for (int i : wrong) predicted.push_back((i + 1) % 10);
    const std::string path = temp().file("wrong.png");
    write_misclassified_grid(path, ds, wrong, predicted, 5);
    const Image back = read_image(path);
    EXPECT_EQ(back.channels, 3);
    EXPECT_GT(back.width, 5 * 84);
    EXPECT_GT(back.height, 84 + 2 * 20);
    expect_error([&] { write_misclassified_grid(path, ds, {}, {}); }, path, "no misclassified images");
}

TEST(Font, EveryPrintableCharacterHasItsOwnGlyph) {
    // Each character drawn alone; no two printable characters may look alike, except that
    // characters outside printable ASCII fall back to '?'.
    std::map<std::vector<uint8_t>, char> seen;
    for (int c = 32; c < 127; ++c) {
        Image img{8, 12, 3, std::vector<uint8_t>(8 * 12 * 3, 255)};
        draw_text(img, 1, 1, std::string(1, static_cast<char>(c)), Rgb{0, 0, 0}, 1);
        const auto [it, fresh] = seen.emplace(img.pixels, static_cast<char>(c));
        EXPECT_TRUE(fresh) << "'" << static_cast<char>(c) << "' looks like '" << it->second << "'";
    }
    Image a{8, 12, 3, std::vector<uint8_t>(8 * 12 * 3, 255)}, b = a;
    draw_text(a, 1, 1, "\x01", Rgb{0, 0, 0}, 1);
    draw_text(b, 1, 1, "?", Rgb{0, 0, 0}, 1);
    EXPECT_EQ(a.pixels, b.pixels);
    EXPECT_EQ(text_width("", 2), 0);
    EXPECT_EQ(text_width("ab", 3), (2 * 6 - 1) * 3);
    Image small{4, 4, 3, std::vector<uint8_t>(48, 255)};
    draw_text(small, -10, -3, "clipped at every edge", Rgb{0, 0, 0}, 2);  // must not write outside
}

// ---- The command line: `cumnist predict` and `cumnist show` as a user runs them ---------------

#ifdef CUMNIST_EXE
struct CliRun {
    int status = -1;
    std::vector<std::string> lines;  // stdout and stderr together
};

// The binary built beside this test, or $CUMNIST_EXE (set by a portable package's env.sh, where
// the build folder does not exist).
std::string cumnist_exe() {
    const char* exe = std::getenv("CUMNIST_EXE");
    return exe != nullptr && *exe != '\0' ? exe : CUMNIST_EXE;
}

CliRun run_cumnist(const std::string& args) {
    CliRun r;
    std::FILE* p = ::popen(fmt::format("'{}' {} 2>&1", cumnist_exe(), args).c_str(), "r");
    if (!p) return r;
    char buf[4096];
    std::string out;
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    const int status = ::pclose(p);
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::size_t start = 0;
    for (std::size_t nl; (nl = out.find('\n', start)) != std::string::npos; start = nl + 1) r.lines.push_back(out.substr(start, nl - start));
    if (start < out.size()) r.lines.push_back(out.substr(start));
    return r;
}

// A checkpoint of an untrained 784-16-10 model: enough to exercise the command line.
std::string small_checkpoint() {
    const std::string path = temp().file("small.safetensors");
    if (!fs::exists(path)) {
        Checkpoint c;
        MlpConfig mlp;
        mlp.hidden = {16};
        c.meta.model = mlp;
        c.meta.dataset = "mnist";
        c.parameters = glorot_uniform_init(c.meta.model, 3);
        save_checkpoint(path, c);
    }
    return path;
}

// Every bad file gets exactly one line, "cumnist: error: '<file>': ...", the good one is still
// classified, and the exit status is 1; nothing crashes.
TEST(PredictCommand, BadFilesGetOneErrorLineEachAndExitStatusOne) {
    const std::string model = small_checkpoint();
    Image digit = gray(60, 80, 255);
    fill(digit, 25, 10, 10, 60, 0);
    const std::string good = temp().file("good.png"), empty = temp().file("empty.png"), text = temp().file("text.png"),
                      cut = temp().file("cut.png"), blank = temp().file("blank.png"), folder = temp().file("dir.png"),
                      missing = temp().file("missing.png");
    write_png(good, digit);
    write_bytes(empty, {});
    write_bytes(text, bytes_of("not an image at all"));
    const std::vector<uint8_t> png = encode_png(digit);
    write_bytes(cut, {png.begin(), png.begin() + static_cast<std::ptrdiff_t>(png.size() / 2)});
    write_png(blank, gray(30, 30, 200));
    fs::create_directories(folder);
    const std::vector<std::string> bad = {empty, text, cut, blank, folder, missing};
    std::string args = fmt::format("predict --model '{}' '{}'", model, good);
    for (const std::string& b : bad) args += fmt::format(" '{}'", b);
    const CliRun r = run_cumnist(args);
    EXPECT_EQ(r.status, 1);
    ASSERT_EQ(r.lines.size(), 1 + bad.size()) << fmt::format("{}", fmt::join(r.lines, "\n"));
    EXPECT_EQ(r.lines[0].rfind(good + ": ", 0), 0u) << r.lines[0];
    EXPECT_NE(r.lines[0].find("%)  then "), std::string::npos) << r.lines[0];
    for (std::size_t i = 0; i < bad.size(); ++i) {
        EXPECT_EQ(r.lines[1 + i].rfind("cumnist: error: ", 0), 0u) << r.lines[1 + i];
        EXPECT_NE(r.lines[1 + i].find("'" + bad[i] + "'"), std::string::npos) << r.lines[1 + i];
    }

    // One good image alone: exit 0, --json parses, --save-preprocessed writes the 28 × 28 input.
    const std::string saved = temp().file("seen.png");
    const CliRun ok = run_cumnist(fmt::format("predict --model '{}' '{}' --json --save-preprocessed '{}'", model, good, saved));
    EXPECT_EQ(ok.status, 0);
    const Image seen = read_image(saved);
    EXPECT_EQ(seen.width, 28);
    EXPECT_EQ(seen.height, 28);
    EXPECT_EQ(seen.channels, 1);
    std::string json;
    for (const std::string& l : ok.lines) json += l + "\n";
    const nlohmann::json doc = nlohmann::json::parse(json);
    ASSERT_EQ(doc.at("predictions").size(), 1u);
    EXPECT_EQ(doc["predictions"][0].at("top").size(), 3u);
    EXPECT_TRUE(doc["predictions"][0].at("inverted").get<bool>());

    // The model itself unreadable: one line naming it.
    const CliRun no_model = run_cumnist(fmt::format("predict --model '{}' '{}'", text, good));
    EXPECT_EQ(no_model.status, 1);
    ASSERT_EQ(no_model.lines.size(), 1u);
    EXPECT_NE(no_model.lines[0].find(text), std::string::npos) << no_model.lines[0];
}

void write_idx(const std::string& path, const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
    std::vector<uint8_t> bytes = {0, 0, 8, static_cast<uint8_t>(dims.size())};
    for (uint32_t d : dims)
        for (int k = 3; k >= 0; --k) bytes.push_back(static_cast<uint8_t>(d >> (8 * k)));
    bytes.insert(bytes.end(), data.begin(), data.end());
    write_bytes(path, bytes);
}

// A data folder holding a synthetic "mnist": n_train and n_test random 28x28 images labelled
// i mod 10, the images drawn under `seed` and seed + 1.
std::string synthetic_mnist_folder(const std::string& name, int n_train, int n_test, uint32_t seed) {
    const std::string data = temp().file(name);
    fs::create_directories(data + "/mnist");
    const auto labels = [](int n) {
        std::vector<uint8_t> l(static_cast<std::size_t>(n));
        for (int i = 0; i < n; ++i) l[static_cast<std::size_t>(i)] = static_cast<uint8_t>(i % 10);
        return l;
    };
    write_idx(data + "/mnist/train-images-idx3-ubyte", {n_train, 28, 28},
              cumnist_test::uniform_bytes(static_cast<std::size_t>(n_train) * 784, 0, 255, seed));
    write_idx(data + "/mnist/train-labels-idx1-ubyte", {n_train}, labels(n_train));
    write_idx(data + "/mnist/t10k-images-idx3-ubyte", {n_test, 28, 28},
              cumnist_test::uniform_bytes(static_cast<std::size_t>(n_test) * 784, 0, 255, seed + 1));
    write_idx(data + "/mnist/t10k-labels-idx1-ubyte", {n_test}, labels(n_test));
    return data;
}

TEST(ShowCommand, WritesAGridOfTheRequestedShape) {
    const std::string data = temp().file("data");
    fs::create_directories(data + "/mnist");
    const int n = 12;
    std::vector<uint8_t> labels(n);
    for (int i = 0; i < n; ++i) labels[i] = static_cast<uint8_t>(i % 10);
    write_idx(data + "/mnist/train-images-idx3-ubyte", {n, 28, 28}, cumnist_test::uniform_bytes(n * 784, 0, 255, 4));
    write_idx(data + "/mnist/train-labels-idx1-ubyte", {n}, labels);
    const std::string out = temp().file("show.png");
    const CliRun r = run_cumnist(fmt::format("show --data '{}' -n 7 --columns 4 --seed 5 -o '{}'", data, out));
    ASSERT_EQ(r.status, 0) << fmt::format("{}", fmt::join(r.lines, "\n"));
    const Image img = read_image(out);
    // 4 columns, 2 rows; cells 94 wide ("Label: 0" at text scale 2), 20 + 4 + 84 tall; a title line,
    // here wider than the grid.
    EXPECT_EQ(img.width, std::max(2 * 12 + 4 * 94 + 3 * 16, 2 * 12 + text_width("mnist train: 7 random images (seed 5)", 2)));
    EXPECT_EQ(img.height, 2 * 12 + 28 + 2 * 108 + 16);
    const CliRun too_many = run_cumnist(fmt::format("show --data '{}' -n 13 -o '{}'", data, out));
    EXPECT_EQ(too_many.status, 1);
    ASSERT_EQ(too_many.lines.size(), 1u);
    EXPECT_NE(too_many.lines[0].find("--count 13 is more than the 12 images of mnist train"), std::string::npos)
        << too_many.lines[0];
}
// --threads beyond the cores is clamped with one notice naming both counts, before anything else
// happens (here the missing data is what then stops the run); a negative count is an error.
TEST(ThreadsFlag, MoreThanTheCoresIsClampedWithANotice) {
    const std::string empty_dir = temp().file("no-data");
    fs::create_directories(empty_dir);
    const int cores = omp_get_num_procs();  // the cores this process may run on, as cumnist counts them
    const CliRun r = run_cumnist(fmt::format("train --device cpu --threads 100000 --data '{}'", empty_dir));
    EXPECT_EQ(r.status, 1);
    ASSERT_EQ(r.lines.size(), 2u) << fmt::format("{}", fmt::join(r.lines, "\n"));
    EXPECT_EQ(r.lines[0], fmt::format("--threads 100000: this machine has {} core{} available; using {}.", cores,
                                      cores == 1 ? "" : "s", cores));
    EXPECT_NE(r.lines[1].find("missing data"), std::string::npos) << r.lines[1];
    const CliRun negative = run_cumnist(fmt::format("bench --device cpu --threads -1 --data '{}'", empty_dir));
    EXPECT_EQ(negative.status, 1);
    ASSERT_EQ(negative.lines.size(), 1u);
    EXPECT_NE(negative.lines[0].find("--threads must be 0 (all cores) or positive, got -1"), std::string::npos)
        << negative.lines[0];
}

// Every `train` flag reaches the configuration it names: the printed configuration and the
// checkpoint's metadata (what a resumed run and `eval` use) for one non-default value of each, on
// a small synthetic data set (64 training and 20 test images), one epoch on the CPU.
TEST(TrainCommand, EveryFlagReachesTheConfiguration) {
    const std::string data = temp().file("train-flags");
    fs::create_directories(data + "/mnist");
    std::vector<uint8_t> train_labels(64), test_labels(20);
    for (std::size_t i = 0; i < train_labels.size(); ++i) train_labels[i] = static_cast<uint8_t>(i % 10);
    for (std::size_t i = 0; i < test_labels.size(); ++i) test_labels[i] = static_cast<uint8_t>((i * 3) % 10);
    write_idx(data + "/mnist/train-images-idx3-ubyte", {64, 28, 28}, cumnist_test::uniform_bytes(64 * 784, 0, 255, 21));
    write_idx(data + "/mnist/train-labels-idx1-ubyte", {64}, train_labels);
    write_idx(data + "/mnist/t10k-images-idx3-ubyte", {20, 28, 28}, cumnist_test::uniform_bytes(20 * 784, 0, 255, 22));
    write_idx(data + "/mnist/t10k-labels-idx1-ubyte", {20}, test_labels);
    const auto has_line = [](const CliRun& r, const std::string& want) {
        return std::find(r.lines.begin(), r.lines.end(), want) != r.lines.end();
    };
    const auto all = [](const CliRun& r) { return fmt::format("{}", fmt::join(r.lines, "\n")); };

    const std::string save = temp().file("train-flags-run");
    const CliRun sgd = run_cumnist(fmt::format(
        "train --data '{}' --device cpu --threads 1 --epochs 1 --batch-size 8 --optimizer sgd --lr 0.05 --momentum 0.9 "
        "--hidden 16,8 --activation sigmoid --dropout 0.3 --seed 11 --eval-batch 7 --data-placement resident --tf32 "
        "--save '{}'",
        data, save));
    ASSERT_EQ(sgd.status, 0) << all(sgd);
    EXPECT_TRUE(has_line(sgd, "--tf32: GPU only, no effect on the CPU.")) << all(sgd);
    EXPECT_NE(sgd.lines.size(), 0u);
    EXPECT_TRUE(has_line(sgd, fmt::format("cumnist: training on the CPU ({}, 1 thread)", device_name(Device::Cpu))))
        << all(sgd);
    EXPECT_TRUE(has_line(sgd, "  model      784-16-8-10 sigmoid, dropout 0.3 (12786 parameters)")) << all(sgd);
    EXPECT_TRUE(has_line(sgd, "  optimizer  sgd (lr 0.05, momentum 0.9)")) << all(sgd);
    EXPECT_TRUE(has_line(sgd, "  schedule   1 epoch of 8 steps (batch 8), seed 11")) << all(sgd);
    const Checkpoint c = load_checkpoint(save + "/last.safetensors");
    const std::optional<MlpConfig> mlp = as_mlp(c.meta.model);
    ASSERT_TRUE(mlp.has_value()) << c.meta.model.layer_string();
    EXPECT_EQ(mlp->hidden, (std::vector<int>{16, 8}));
    EXPECT_EQ(mlp->activation, Activation::Sigmoid);
    EXPECT_FLOAT_EQ(mlp->dropout, 0.3f);
    EXPECT_EQ(c.meta.optimizer.kind, OptimizerKind::Sgd);
    EXPECT_FLOAT_EQ(c.meta.optimizer.lr, 0.05f);
    EXPECT_FLOAT_EQ(c.meta.optimizer.momentum, 0.9f);
    EXPECT_EQ(c.meta.seed, 11u);
    EXPECT_EQ(c.meta.batch, 8);
    EXPECT_EQ(c.meta.step, 8u);
    EXPECT_EQ(c.meta.device, "cpu");
    EXPECT_EQ(c.meta.dataset, "mnist");
    ASSERT_EQ(c.optimizer_state.size(), 1u);  // SGD's velocity

    const CliRun rms = run_cumnist(fmt::format(
        "train --data '{}' --device cpu --epochs 2 -b 16 --optimizer rmsprop --lr 0.002 --hidden none --no-graph "
        "--data-placement stream",
        data));
    ASSERT_EQ(rms.status, 0) << all(rms);
    EXPECT_TRUE(has_line(rms, "--no-graph: GPU only, no effect on the CPU.")) << all(rms);
    EXPECT_TRUE(has_line(rms, "  model      784-10 (7850 parameters)")) << all(rms);
    EXPECT_TRUE(has_line(rms, "  optimizer  rmsprop (lr 0.002, rho 0.9, epsilon 1e-07)")) << all(rms);
    EXPECT_TRUE(has_line(rms, "  schedule   2 epochs of 4 steps (batch 16), seed 42")) << all(rms);
    // Streaming on the CPU is announced (resident is the default there and is not).
    EXPECT_TRUE(std::any_of(rms.lines.begin(), rms.lines.end(),
                            [](const std::string& l) { return l.rfind("  placement  stream:", 0) == 0; }))
        << all(rms);
    EXPECT_TRUE(has_line(rms, "Epoch 2/2")) << all(rms);

    const CliRun adam = run_cumnist(fmt::format("train --data '{}' --device cpu --epochs 1 -b 64 --lr 0.01", data));
    ASSERT_EQ(adam.status, 0) << all(adam);
    EXPECT_TRUE(has_line(adam, "  model      784-512-256-10 relu, dropout 0.2 (535818 parameters)")) << all(adam);
    EXPECT_TRUE(has_line(adam, "  optimizer  adam (lr 0.01, beta1 0.9, beta2 0.999, epsilon 1e-07)")) << all(adam);
    EXPECT_TRUE(has_line(adam, "  schedule   1 epoch of 1 step (batch 64), seed 42")) << all(adam);
}

// Usage errors: one "cumnist: error:" line and exit status 2; no arguments print the usage; an
// unknown command is named; values are taken exactly or refused.
TEST(CommandLine, UsageErrorsExitTwoWithOneLine) {
    const auto all = [](const CliRun& r) { return fmt::format("{}", fmt::join(r.lines, "\n")); };
    const CliRun bare = run_cumnist("");
    EXPECT_EQ(bare.status, 2) << all(bare);
    EXPECT_NE(all(bare).find("Usage: cumnist [OPTIONS] SUBCOMMAND"), std::string::npos) << all(bare);
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"frobnicate", "cumnist: error: unknown command 'frobnicate' (the commands: train, selftest, eval, bench, "
                       "predict, show, export, sweep; see cumnist --help)"},
        {"train --bogus", "cumnist: error: The following argument was not expected: --bogus (see cumnist train --help)"},
        {"train --epochs", "cumnist: error: --epochs: 1 required INT missing (see cumnist train --help)"},
        {"train --epochs 1 --epochs 2", "cumnist: error: --epochs is given 2 times; give it once (see cumnist train --help)"},
        {"train --seed -1", "cumnist: error: --seed: '-1' is not an integer in [0, 18446744073709551615]"},
        {"train --seed 1e23", "--seed: '1e23' is not an integer in [0, 18446744073709551615]"},
        {"train --seed 18446744073709551616", "--seed: '18446744073709551616' is not an integer"},
        {"bench --seed -5", "--seed: '-5' is not an integer"},
        {"show --seed x", "--seed: 'x' is not an integer"},
        {"predict --threads x -m m.safetensors a.png", "Could not convert: --threads = x (see cumnist predict --help)"},
    };
    for (const auto& [args, message] : cases) {
        const CliRun r = run_cumnist(args);
        EXPECT_EQ(r.status, 2) << args << ": " << all(r);
        ASSERT_EQ(r.lines.size(), 1u) << args << ": " << all(r);
        EXPECT_NE(r.lines[0].find(message), std::string::npos) << args << ": " << r.lines[0];
    }
    // Values train accepts are values a checkpoint holds: the epoch limit is the checkpoint's (exit 1).
    const CliRun epochs = run_cumnist("train --epochs 1073741825 --data /nonexistent");
    EXPECT_EQ(epochs.status, 1) << all(epochs);
    EXPECT_EQ(all(epochs), "cumnist: error: --epochs must be in [1, 1073741824], got 1073741825");
    // A GEMM that cannot fit is refused naming its size, not with a bare std::bad_alloc.
    const CliRun gemm = run_cumnist("bench --device cpu --gemm-size 10000000 --data /nonexistent");
    EXPECT_EQ(gemm.status, 1) << all(gemm);
    EXPECT_NE(all(gemm).find("--gemm-size 10000000 needs three 10000000x10000000 float matrices"), std::string::npos)
        << all(gemm);
    // Help shows no CLI11 default markers such as "{false}".
    const CliRun help = run_cumnist("bench --help");
    EXPECT_EQ(help.status, 0);
    EXPECT_EQ(all(help).find("{false}"), std::string::npos) << all(help);
    EXPECT_NE(all(help).find("--no-gemm-floor"), std::string::npos) << all(help);
    // predict takes --threads and --device auto like the other commands.
    const CliRun predict_help = run_cumnist("predict --help");
    EXPECT_NE(all(predict_help).find("--threads"), std::string::npos) << all(predict_help);
    // The largest seed is a seed; help and the version still exit 0.
    EXPECT_EQ(run_cumnist("train --seed 18446744073709551615 --help").status, 0);
    EXPECT_EQ(run_cumnist("--version").status, 0);
    // A flag the optimizer has no use for is refused (exit 1: a bad value, not a bad command line).
    const CliRun momentum = run_cumnist("train --optimizer adam --momentum 0.9 --data /nonexistent");
    EXPECT_EQ(momentum.status, 1) << all(momentum);
    EXPECT_NE(all(momentum).find("--momentum applies to --optimizer sgd only; adam has no momentum"), std::string::npos)
        << all(momentum);
}

// --early-stopping: a model fitting random labels sees its validation loss rise within a few
// epochs; the run stops there, says why, and counts only the epochs it ran.
TEST(TrainCommand, EarlyStoppingEndsTheRunWhenTheValidationLossStopsImproving) {
    const std::string data = temp().file("early-stop");
    fs::create_directories(data + "/mnist");
    std::vector<uint8_t> labels = cumnist_test::uniform_bytes(200, 0, 9, 41);  // noise: nothing to learn
    write_idx(data + "/mnist/train-images-idx3-ubyte", {200, 28, 28}, cumnist_test::uniform_bytes(200 * 784, 0, 255, 42));
    write_idx(data + "/mnist/train-labels-idx1-ubyte", {200}, labels);
    write_idx(data + "/mnist/t10k-images-idx3-ubyte", {20, 28, 28}, cumnist_test::uniform_bytes(20 * 784, 0, 255, 43));
    write_idx(data + "/mnist/t10k-labels-idx1-ubyte", {20}, std::vector<uint8_t>(labels.begin(), labels.begin() + 20));
    const auto all = [](const CliRun& r) { return fmt::format("{}", fmt::join(r.lines, "\n")); };
    const CliRun r = run_cumnist(fmt::format("train --data '{}' --device cpu --threads 1 --hidden 128 --dropout 0 --lr 0.01 "
                                             "--epochs 30 --validation-split 0.2 --early-stopping 2",
                                             data));
    ASSERT_EQ(r.status, 0) << all(r);
    int epochs = 0, stopped_after = 0;
    for (const std::string& line : r.lines) {
        if (line.rfind("Epoch ", 0) == 0) ++epochs;
        if (line.rfind("Early stopping after epoch ", 0) == 0) stopped_after = std::atoi(line.c_str() + 27);
    }
    ASSERT_GT(stopped_after, 2) << all(r);
    EXPECT_LT(stopped_after, 30) << all(r);
    EXPECT_EQ(epochs, stopped_after) << "no epoch runs after the stop";
    EXPECT_NE(all(r).find(fmt::format("Done: {} epochs in", stopped_after)), std::string::npos) << all(r);
    EXPECT_NE(all(r).find("the validation loss has not improved for 2 epochs"), std::string::npos) << all(r);
    EXPECT_NE(all(r).find("Test (evaluated once, after the last epoch)"), std::string::npos) << all(r);
}

// cumnist sweep: every trial of a grid runs as its own train process; a failing one is recorded and
// the sweep goes on; the results file gets a line per trial; the same command again runs nothing.
TEST(SweepCommand, RunsRecordsRanksAndResumes) {
    const std::string data = synthetic_mnist_folder("sweep-data", 120, 30, 51);
    const std::string space = temp().file("sweep-space.json"), out = temp().file("sweep-out");
    {
        std::ofstream f(space);
        f << R"({"lr": [0.01, -1], "hidden": ["16"]})";
    }
    const auto all = [](const CliRun& r) { return fmt::format("{}", fmt::join(r.lines, "\n")); };
    const std::string args =
        fmt::format("sweep --space '{}' --out '{}' --data '{}' --epochs 2 --device cpu --threads 1", space, out, data);
    const CliRun r = run_cumnist(args);
    ASSERT_EQ(r.status, 0) << all(r);
    EXPECT_NE(all(r).find("Trial 2/2: --hidden 16 --lr -1"), std::string::npos) << all(r);
    EXPECT_NE(all(r).find("failed (exit 1): cumnist: error: learning rate must be a positive number, got -1"),
              std::string::npos)
        << all(r);
    EXPECT_NE(all(r).find("Best: trial 1, validation accuracy"), std::string::npos) << all(r);
    EXPECT_NE(all(r).find("--epochs 2 --validation-split 0.1 --hidden 16 --lr 0.01"), std::string::npos) << all(r);
    EXPECT_NE(all(r).find("Its test set result (evaluated once, after the selection): Test loss"), std::string::npos)
        << all(r);
    std::ifstream results(out + "/trials.jsonl");
    std::vector<nlohmann::json> lines;
    for (std::string line; std::getline(results, line);) lines.push_back(nlohmann::json::parse(line));
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(lines[0].at("status"), "done");
    EXPECT_EQ(lines[0].at("epochs").size(), 2u) << "the trial's per-epoch metrics";
    EXPECT_EQ(lines[1].at("status"), "failed");
    EXPECT_TRUE(fs::exists(out + "/trial-0000/best.safetensors"));
    // Again: nothing runs, the same ranking.
    const CliRun again = run_cumnist(args);
    ASSERT_EQ(again.status, 0) << all(again);
    EXPECT_NE(all(again).find("resuming  2 finished runs already in"), std::string::npos) << all(again);
    EXPECT_EQ(all(again).find("Trial 1/2"), std::string::npos) << all(again);
    // Another space in the same folder is refused.
    {
        std::ofstream f(space);
        f << R"({"lr": [0.5, 0.25], "hidden": ["16"]})";
    }
    const CliRun other = run_cumnist(args);
    EXPECT_EQ(other.status, 1);
    EXPECT_NE(all(other).find("records trial 0 of another search"), std::string::npos) << all(other);

    // Successive halving over three trials, eta 3: rungs of 1 and 3 epochs, one trial promoted and
    // continued (train --resume) to 3 epochs; --report of the folder ranks it first.
    {
        std::ofstream f(space);
        f << R"({"lr": [0.01, 0.001, 0.0001], "hidden": ["16"]})";
    }
    const std::string halving_out = temp().file("sweep-halving");
    const CliRun h = run_cumnist(fmt::format("sweep --space '{}' --out '{}' --data '{}' --strategy halving --min-epochs 1 "
                                             "--eta 3 --epochs 3 --device cpu --threads 1",
                                             space, halving_out, data));
    ASSERT_EQ(h.status, 0) << all(h);
    EXPECT_NE(all(h).find("rungs of 1, 3 epochs"), std::string::npos) << all(h);
    EXPECT_NE(all(h).find("Rung 2: continuing the best 1 trial to 3 epochs"), std::string::npos) << all(h);
    std::ifstream hr(halving_out + "/trials.jsonl");
    std::vector<nlohmann::json> records;
    for (std::string line; std::getline(hr, line);) records.push_back(nlohmann::json::parse(line));
    ASSERT_EQ(records.size(), 4u) << "three trials in rung 1, one in rung 2";
    EXPECT_EQ(records[3].at("rung"), 1);
    EXPECT_EQ(records[3].at("epochs").size(), 3u) << "the promoted trial continued to 3 epochs";
    const CliRun report = run_cumnist(fmt::format("sweep --report '{}' --data '{}' --device cpu", halving_out, data));
    ASSERT_EQ(report.status, 0) << all(report);
    EXPECT_NE(all(report).find(fmt::format("Best: trial {},", records[3].at("trial").get<int>() + 1)), std::string::npos)
        << all(report);
}

// The three ways of running trials give the same trials: in this process one at a time (the
// default), two at a time on two threads (--parallel 2), and as child processes (--isolate). With
// --objective loss the ranking is by the lowest validation loss and each trial's best.safetensors
// is the epoch of that loss.
TEST(SweepCommand, InProcessParallelAndIsolatedTrialsAgree) {
    const std::string data = synthetic_mnist_folder("sweep-modes-data", 150, 30, 61);
    const auto all = [](const CliRun& r) { return fmt::format("{}", fmt::join(r.lines, "\n")); };
    // Each trial's per-epoch numbers (not its times), by trial.
    const auto trials = [](const std::string& out) {
        std::map<int, std::vector<std::vector<double>>> by_trial;
        std::ifstream in(out + "/trials.jsonl");
        for (std::string line; std::getline(in, line);) {
            const nlohmann::json r = nlohmann::json::parse(line);
            EXPECT_EQ(r.at("status"), "done") << line;
            for (const nlohmann::json& e : r.at("epochs"))
                by_trial[r.at("trial").get<int>()].push_back(
                    {e.at("train_loss").get<double>(), e.at("validation_loss").get<double>(),
                     e.at("validation_accuracy").get<double>()});
        }
        return by_trial;
    };
    // One thread per trial in every mode: the same thread count, so the same bits (another count
    // may split a GEMM's reduction differently).
    const std::string base = fmt::format("sweep --param 'lr=0.01,0.001' --param 'hidden=16|8,8' --data '{}' --epochs 3 "
                                         "--device cpu --threads 1",
                                         data);
    std::map<std::string, std::map<int, std::vector<std::vector<double>>>> results;
    for (const std::string mode : {"", "--parallel 2", "--isolate", "--parallel 2 --isolate"}) {
        const std::string out = temp().file("sweep-modes-" + std::to_string(results.size()));
        const CliRun r = run_cumnist(fmt::format("{} --out '{}' {}", base, out, mode));
        ASSERT_EQ(r.status, 0) << mode << ": " << all(r);
        const bool in_process = mode.find("--isolate") == std::string::npos;
        const std::string at_a_time = mode.find("--parallel 2") != std::string::npos ? "2 at a time" : "1 at a time";
        EXPECT_NE(all(r).find((in_process ? "  trials    in this process, " : "  trials    child processes (--isolate), ") +
                              at_a_time + " (1 thread each on the CPU)"),
                  std::string::npos)
            << mode << ": " << all(r);
        if (in_process) {
            EXPECT_NE(all(r).find("on mnist loaded once (150 training and 30 test images"), std::string::npos) << all(r);
        }
        results[mode] = trials(out);
        ASSERT_EQ(results[mode].size(), 4u) << mode << ": " << all(r);
        for (const auto& [k, epochs] : results[mode]) EXPECT_EQ(epochs.size(), 3u) << mode << " trial " << k;
    }
    for (const auto& [mode, by_trial] : results) EXPECT_EQ(by_trial, results.at("")) << "'" << mode << "' differs from in process, one at a time";

    // --objective loss: ranked by the lowest validation loss, best.safetensors at that epoch.
    const std::string out = temp().file("sweep-modes-loss");
    const CliRun r = run_cumnist(fmt::format("{} --out '{}' --objective loss", base, out));
    ASSERT_EQ(r.status, 0) << all(r);
    EXPECT_NE(all(r).find("objective: the lowest validation loss"), std::string::npos) << all(r);
    EXPECT_NE(all(r).find("Rank  Trial      Val. loss  Epoch  Arguments"), std::string::npos) << all(r);
    std::ifstream in(out + "/trials.jsonl");
    double lowest = HUGE_VAL;
    int lowest_trial = -1;
    for (std::string line; std::getline(in, line);) {
        const nlohmann::json rec = nlohmann::json::parse(line);
        double trial_lowest = HUGE_VAL;
        int epoch = 0;
        for (const nlohmann::json& e : rec.at("epochs"))
            if (e.at("validation_loss").get<double>() < trial_lowest)
                trial_lowest = e.at("validation_loss").get<double>(), epoch = e.at("epoch").get<int>();
        EXPECT_EQ(rec.at("best_validation_loss").get<double>(), trial_lowest) << line;
        EXPECT_EQ(rec.at("best_loss_epoch").get<int>(), epoch) << line;
        const Checkpoint best = load_checkpoint(rec.at("dir").get<std::string>() + "/best.safetensors");
        EXPECT_TRUE(best.meta.best_on_loss);
        EXPECT_EQ(best.meta.epoch, epoch) << "best.safetensors is the epoch of the lowest validation loss: " << line;
        if (trial_lowest < lowest) lowest = trial_lowest, lowest_trial = rec.at("trial").get<int>();
    }
    EXPECT_NE(all(r).find(fmt::format("Best: trial {}, validation loss {:.4f} after epoch", lowest_trial + 1, lowest)),
              std::string::npos)
        << all(r);
    // --report ranks by the objective the sweep ran with, as its records say.
    const CliRun merged = run_cumnist(fmt::format("sweep --report '{}' --data '{}' --device cpu", out, data));
    ASSERT_EQ(merged.status, 0) << all(merged);
    EXPECT_NE(all(merged).find(fmt::format("Best: trial {}, validation loss {:.4f}", lowest_trial + 1, lowest)),
              std::string::npos)
        << all(merged);
    // The records of an accuracy sweep are another search's for a loss sweep (their checkpoints differ).
    const CliRun other = run_cumnist(fmt::format("{} --out '{}' --objective accuracy", base, out));
    EXPECT_EQ(other.status, 1) << all(other);
    EXPECT_NE(all(other).find("of another search"), std::string::npos) << all(other);
    // Bad values get one line each.
    for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
             {"--objective speed", "--objective: unknown objective 'speed' (expected accuracy or loss)"},
             {"--parallel 0", "--parallel must be in [1, 64], got 0"},
             {"--param lr=0.1", "--param 'lr=0.1': 'lr' is given twice"},
             {"--param best-on=loss", "\"best-on\" is set by the sweep itself"}}) {
        const CliRun bad = run_cumnist(fmt::format("{} --out '{}' {}", base, temp().file("sweep-modes-bad"), args));
        EXPECT_EQ(bad.status, 1) << args << ": " << all(bad);
        ASSERT_EQ(bad.lines.size(), 1u) << args << ": " << all(bad);
        EXPECT_NE(bad.lines[0].find(message), std::string::npos) << args << ": " << bad.lines[0];
    }
}

// --model: a layer string trains, is saved as its layer list, evaluates and predicts; a bad one
// and MLP flags beside another model fail before any data is read, with one line.
TEST(TrainCommand, ModelFlag) {
    const std::string data = synthetic_mnist_folder("train-model", 48, 48, 31);
    const auto all = [](const CliRun& r) { return fmt::format("{}", fmt::join(r.lines, "\n")); };
    const std::string layers = "conv4k3same,relu,pool2,conv6k3s2,tanh,flatten,dropout0.25,dense10";
    const std::string save = temp().file("train-model-run");
    const CliRun run = run_cumnist(fmt::format("train --data '{}' --device cpu --threads 1 --epochs 1 --batch-size 16 "
                                               "--model {} --save '{}'",
                                               data, layers, save));
    ASSERT_EQ(run.status, 0) << all(run);
    // (4·9 + 4) + (6·4·9 + 6) + (10·216 + 10) parameters.
    EXPECT_NE(all(run).find("  model      " + layers + " (2432 parameters)"), std::string::npos) << all(run);
    const Checkpoint c = load_checkpoint(save + "/last.safetensors");
    EXPECT_EQ(c.meta.model.layer_string(), layers);
    const CliRun eval = run_cumnist(fmt::format("eval --data '{}' --device cpu --model '{}/last.safetensors'", data, save));
    EXPECT_EQ(eval.status, 0) << all(eval);
    EXPECT_NE(all(eval).find("  model      " + layers), std::string::npos) << all(eval);

    // Errors: one line each, exit 1, before the data is touched (a missing data folder would say so).
    const std::string nowhere = temp().file("no-data-here");
    const auto expect_error = [&](const std::string& args, const std::string& message) {
        const CliRun r = run_cumnist(fmt::format("train --data '{}' --device cpu {}", nowhere, args));
        EXPECT_EQ(r.status, 1) << args << ": " << all(r);
        ASSERT_EQ(r.lines.size(), 1u) << args << ": " << all(r);
        EXPECT_NE(r.lines[0].find(message), std::string::npos) << args << ": " << r.lines[0];
    };
    expect_error("--model conv8k3,dense10", "cumnist: error: model: layer 2 'dense10': dense after a 8x26x26 spatial "
                                            "output needs 'flatten' before it");
    expect_error("--model cnn --hidden 64", "--hidden describes the MLP (--model mlp); --model 'cnn' has its own layers");
    expect_error("--model resnet50", "model: 'resnet50': unknown layer");
}

// `cumnist selftest` as a user runs it: without a usable GPU one error line with the reason and
// exit 1; on a GPU the table, every check PASS, the count line, exit 0.
TEST(SelftestCommand, RefusesWithoutAGpuAndPassesOnOne) {
    const CliRun r = run_cumnist("selftest");
    const std::string all = fmt::format("{}", fmt::join(r.lines, "\n"));
    if (!cuda_available()) {
        EXPECT_EQ(r.status, 1) << all;
        ASSERT_EQ(r.lines.size(), 1u) << all;
        EXPECT_EQ(r.lines[0], "cumnist: error: selftest needs a usable GPU: " + cuda_unavailable_reason());
        CUMNIST_SKIP_WITHOUT_GPU();
    }
    EXPECT_EQ(r.status, 0) << all;
    ASSERT_GE(r.lines.size(), 4u) << all;
    EXPECT_EQ(r.lines[0].rfind("cumnist selftest on ", 0), 0u) << all;
    int checks = 0;
    for (const std::string& line : r.lines) {
        if (line.find(" PASS ") != std::string::npos) ++checks;
        EXPECT_EQ(line.find(" FAIL "), std::string::npos) << line;
    }
    EXPECT_GE(checks, 20) << all;
    EXPECT_EQ(r.lines.back(), fmt::format("{} of {} checks passed", checks, checks)) << all;
}

#endif  // CUMNIST_EXE

}  // namespace
}  // namespace cumnist
