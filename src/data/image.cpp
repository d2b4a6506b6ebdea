// Image input and output: decoding (stb_image from Debian's libstb, plus the ASCII netpbm
// variants it lacks), MNIST-style preprocessing, PNG writing (stb_image_write), resampling
// (stb_image_resize), and the digit-grid renderer with its 5×7 bitmap font.
#include "cumnist/image.h"

#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "cumnist/data.h"
#include "cumnist/error.h"
#include "cumnist/file_io.h"

namespace cumnist {
namespace {

// ---- Reading ---------------------------------------------------------------------------------

enum class Format { Png, Jpeg, Bmp, Netpbm, Unknown };

bool starts_with(const uint8_t* bytes, std::size_t size, const char* magic, std::size_t n) {
    return size >= n && std::memcmp(bytes, magic, n) == 0;
}

// The format from the first bytes. stb_image would also guess (TGA has no signature, so it
// "decodes" many non-images as TGA); telling the format ourselves rejects those instead.
Format detect_format(const uint8_t* b, std::size_t size) {
    if (starts_with(b, size, "\x89PNG\r\n\x1a\n", 8)) return Format::Png;
    if (size >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return Format::Jpeg;
    if (starts_with(b, size, "BM", 2)) return Format::Bmp;
    if (size >= 3 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6' && std::isspace(b[2])) return Format::Netpbm;
    return Format::Unknown;
}

const char* format_name(Format f) {
    switch (f) {
        case Format::Png: return "PNG";
        case Format::Jpeg: return "JPEG";
        case Format::Bmp: return "BMP";
        default: return "netpbm";
    }
}

// A name for common formats we do not read, so the message says what the file is.
std::string describe_unknown(const uint8_t* b, std::size_t size) {
    if (starts_with(b, size, "GIF8", 4)) return "a GIF image";
    if (starts_with(b, size, "II*\0", 4) || starts_with(b, size, "MM\0*", 4)) return "a TIFF image";
    if (size >= 12 && starts_with(b, size, "RIFF", 4) && std::memcmp(b + 8, "WEBP", 4) == 0) return "a WebP image";
    if (size >= 12 && std::memcmp(b + 4, "ftyp", 4) == 0) return "an HEIF/AVIF or MP4 file";
    if (starts_with(b, size, "%PDF", 4)) return "a PDF document";
    if (starts_with(b, size, "\x1f\x8b", 2)) return "gzip-compressed data";
    if (starts_with(b, size, "P7", 2)) return "a PAM image";
    std::string head;
    for (std::size_t i = 0; i < std::min<std::size_t>(size, 8); ++i) head += fmt::format("{}{:02x}", i ? " " : "", b[i]);
    return fmt::format("not an image (it starts with bytes {})", head);
}

uint32_t be32(const uint8_t* p) { return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3]; }
uint32_t le32(const uint8_t* p) { return uint32_t{p[3]} << 24 | uint32_t{p[2]} << 16 | uint32_t{p[1]} << 8 | p[0]; }
uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[1] << 8 | p[0]); }

void check_pixel_count(const std::string& name, Format format, double width, double height) {
    if (width < 1 || height < 1 || width * height > static_cast<double>(kMaxImagePixels))
        throw Error(fmt::format("'{}': {} image of {} x {} pixels, expected 1 to {} megapixels", name, format_name(format),
                                width, height, kMaxImagePixels >> 20));
}

// What stb_image does not check itself, before it decodes: a PNG's size (stb reports an oversized
// one as "unknown image type"), and that an uncompressed BMP holds the pixel rows its header
// promises (stb would fill a truncated one with zeros).
void precheck(const std::string& name, Format format, const uint8_t* b, std::size_t size) {
    if (format == Format::Png && size >= 24 && std::memcmp(b + 12, "IHDR", 4) == 0) {
        check_pixel_count(name, format, be32(b + 16), be32(b + 20));
    } else if (format == Format::Bmp) {
        if (size < 26) throw Error(fmt::format("'{}': truncated BMP: {} bytes, no complete header", name, size));
        const uint32_t data_offset = le32(b + 10), header_size = le32(b + 14);
        double width = 0, height = 0;
        uint32_t bpp = 0, compression = 0;
        if (header_size == 12) {  // OS/2 BITMAPCOREHEADER
            width = le16(b + 18), height = le16(b + 20), bpp = le16(b + 24);
        } else if (header_size >= 40 && size >= 34) {
            width = static_cast<int32_t>(le32(b + 18));
            height = std::abs(static_cast<double>(static_cast<int32_t>(le32(b + 22))));  // negative: top-down
            bpp = le16(b + 28), compression = le32(b + 30);
        } else {
            throw Error(fmt::format("'{}': corrupt BMP header (header size {})", name, header_size));
        }
        check_pixel_count(name, format, width, height);
        if (compression == 0 || compression == 3) {  // BI_RGB, BI_BITFIELDS: rows of 4-byte-aligned pixels
            const double row_bytes = std::floor((width * bpp + 31) / 32) * 4;
            const double needed = data_offset + row_bytes * height;
            if (static_cast<double>(size) < needed)
                throw Error(fmt::format("'{}': truncated BMP: {} bytes, its header describes {:.0f}", name, size, needed));
        }
    }
}

Image decode_with_stb(const std::string& name, Format format, const uint8_t* bytes, std::size_t size) {
    precheck(name, format, bytes, size);
    const int len = static_cast<int>(size);  // size <= kMaxImageFileBytes < 2^31, checked by the caller
    int w = 0, h = 0, comp = 0;
    // The header first, so no pixel memory is allocated for dimensions a corrupt file claims.
    if (!stbi_info_from_memory(bytes, len, &w, &h, &comp))
        throw Error(fmt::format("'{}': corrupt or unsupported {} header", name, format_name(format)));
    check_pixel_count(name, format, w, std::abs(h));  // stb's BMP header reports a top-down image's height negative
    stbi_uc* data = stbi_load_from_memory(bytes, len, &w, &h, &comp, 0);
    if (!data) {
        // A JPEG cut short (an interrupted download) ends without its end-of-image marker.
        if (format == Format::Jpeg && !(size >= 2 && bytes[size - 2] == 0xFF && bytes[size - 1] == 0xD9))
            throw Error(fmt::format("'{}': truncated JPEG: {} bytes and no end-of-image marker (stb_image: {})", name,
                                    size, stbi_failure_reason()));
        throw Error(fmt::format("'{}': corrupt, truncated or unsupported {} image (stb_image: {})", name,
                                format_name(format), stbi_failure_reason()));
    }
    Image img;
    img.width = w;
    img.height = h;
    img.channels = comp;
    img.pixels.assign(data, data + static_cast<std::size_t>(w) * h * comp);
    stbi_image_free(data);
    return img;
}

// The netpbm formats, binary and ASCII: P1 PBM, P2 PGM, P3 PPM (ASCII), P4 PBM, P5 PGM, P6 PPM
// (binary; samples of 1 byte, or 2 big-endian bytes when the maximum value exceeds 255). Header
// tokens are separated by whitespace and '#' comments. stb_image reads only P5 and P6, and fills
// a truncated one with zeros; this reader checks every count against the file.
class NetpbmReader {
public:
    NetpbmReader(const std::string& name, const uint8_t* bytes, std::size_t size)
        : m_name(name), m_b(bytes), m_size(size) {}

    Image read() {
        const char kind = static_cast<char>(m_b[1]);
        m_pos = 2;
        const bool bitmap = kind == '1' || kind == '4', binary = kind >= '4';
        const int channels = kind == '3' || kind == '6' ? 3 : 1;
        const long width = header_number("width"), height = header_number("height");
        const long maxval = bitmap ? 1 : header_number("maximum value");
        check_pixel_count(m_name, Format::Netpbm, static_cast<double>(width), static_cast<double>(height));
        if (maxval < 1 || maxval > 65535)
            throw Error(fmt::format("'{}': netpbm maximum value {}, expected 1 to 65535", m_name, maxval));

        Image img;
        img.width = static_cast<int>(width);
        img.height = static_cast<int>(height);
        img.channels = channels;
        const std::size_t n = static_cast<std::size_t>(width) * static_cast<std::size_t>(height) * channels;
        auto scale = [&](long v) { return static_cast<uint8_t>((v * 255 + maxval / 2) / maxval); };
        if (binary) {
            ++m_pos;  // the one whitespace byte after the header
            const std::size_t row_bytes = bitmap ? (static_cast<std::size_t>(width) + 7) / 8
                                                 : static_cast<std::size_t>(width) * channels * (maxval > 255 ? 2 : 1);
            const std::size_t have = m_pos < m_size ? m_size - m_pos : 0;
            if (have / row_bytes < static_cast<std::size_t>(height))
                throw Error(fmt::format("'{}': truncated netpbm image: {} bytes of pixel data, {} x {} pixels need {}",
                                        m_name, have, width, height, row_bytes * height));
            img.pixels.resize(n);
            const uint8_t* d = m_b + m_pos;
            for (std::size_t i = 0; i < n; ++i) {
                if (bitmap) {  // rows padded to whole bytes; 1 is black
                    const std::size_t y = i / width, x = i % width;
                    img.pixels[i] = (d[y * row_bytes + x / 8] >> (7 - x % 8)) & 1 ? 0 : 255;
                } else {
                    const long v = maxval > 255 ? (d[2 * i] << 8 | d[2 * i + 1]) : d[i];
                    if (v > maxval)
                        throw Error(fmt::format("'{}': sample {} is {}, above the maximum value {}", m_name, i + 1, v, maxval));
                    img.pixels[i] = scale(v);
                }
            }
            return img;
        }
        // Every ASCII sample takes at least two bytes (a digit and a separator), P1's at least one:
        // a header claiming more than the file can hold is rejected before allocating.
        const std::size_t min_bytes = bitmap ? 1 : 2;
        const std::size_t most = (m_size - m_pos) / min_bytes + 1;
        if (most < n)
            throw Error(fmt::format("'{}': truncated netpbm image: {} x {} pixels claimed, the file holds at most {} samples",
                                    m_name, width, height, most));
        img.pixels.resize(n);
        for (std::size_t i = 0; i < n; ++i) {
            if (bitmap) {
                skip_space();  // P1 samples need no separators: "0101" is four pixels
                if (m_pos >= m_size || (m_b[m_pos] != '0' && m_b[m_pos] != '1'))
                    throw Error(fmt::format("'{}': PBM sample {} of {} is missing or not 0 or 1", m_name, i + 1, n));
                img.pixels[i] = m_b[m_pos++] == '1' ? 0 : 255;  // 1 is black
            } else {
                const long v = number(fmt::format("sample {} of {}", i + 1, n).c_str());
                if (v > maxval)
                    throw Error(fmt::format("'{}': sample {} is {}, above the maximum value {}", m_name, i + 1, v, maxval));
                img.pixels[i] = scale(v);
            }
        }
        return img;
    }

private:
    void skip_space() {
        while (m_pos < m_size) {
            if (m_b[m_pos] == '#') {
                while (m_pos < m_size && m_b[m_pos] != '\n') ++m_pos;
            } else if (std::isspace(m_b[m_pos])) {
                ++m_pos;
            } else {
                break;
            }
        }
    }
    long number(const char* what) {
        skip_space();
        long v = 0;
        int digits = 0;
        while (m_pos < m_size && std::isdigit(m_b[m_pos])) {
            if (++digits > 9) throw Error(fmt::format("'{}': netpbm {} has too many digits", m_name, what));
            v = v * 10 + (m_b[m_pos++] - '0');
        }
        if (digits == 0)
            throw Error(fmt::format("'{}': netpbm {} is missing or not a number{}", m_name, what,
                                    m_pos >= m_size ? " (the file ends early)" : ""));
        return v;
    }
    long header_number(const char* what) {
        const long v = number(what);
        if (m_pos >= m_size || !std::isspace(m_b[m_pos]))
            throw Error(fmt::format("'{}': netpbm {} is not followed by whitespace", m_name, what));
        return v;
    }

    const std::string& m_name;
    const uint8_t* m_b;
    std::size_t m_size;
    std::size_t m_pos = 0;
};

}  // namespace

Image decode_image(const std::string& name, const uint8_t* bytes, std::size_t size) {
    if (size == 0) throw Error(fmt::format("'{}': empty file (0 bytes), expected a PNG, JPEG, BMP or PGM image", name));
    if (size > kMaxImageFileBytes)
        throw Error(fmt::format("'{}': {} bytes, more than the {} MiB supported for an image", name, size,
                                kMaxImageFileBytes >> 20));
    const Format format = detect_format(bytes, size);
    switch (format) {
        case Format::Unknown:
            throw Error(fmt::format("'{}': {}; expected a PNG, JPEG, BMP or PGM/PPM/PBM image", name,
                                    describe_unknown(bytes, size)));
        case Format::Netpbm: return NetpbmReader(name, bytes, size).read();
        default: return decode_with_stb(name, format, bytes, size);
    }
}

Image read_image(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw Error(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
    if (S_ISDIR(st.st_mode)) throw Error(fmt::format("'{}' is a directory, expected an image file", path));
    if (!S_ISREG(st.st_mode)) throw Error(fmt::format("'{}' is not a regular file, expected an image file", path));
    if (st.st_size == 0) throw Error(fmt::format("'{}': empty file (0 bytes), expected a PNG, JPEG, BMP or PGM image", path));
    if (static_cast<uint64_t>(st.st_size) > kMaxImageFileBytes)
        throw Error(fmt::format("'{}': {} bytes, more than the {} MiB supported for an image", path, st.st_size,
                                kMaxImageFileBytes >> 20));
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
    std::vector<uint8_t> bytes(static_cast<std::size_t>(st.st_size));
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (in.gcount() != static_cast<std::streamsize>(bytes.size()))
        throw Error(fmt::format("cannot read '{}': {}", path, in.bad() ? std::strerror(errno) : "the file shrank while being read"));
    return decode_image(path, bytes.data(), bytes.size());
}

// ---- Writing ---------------------------------------------------------------------------------

std::vector<uint8_t> encode_png(const Image& image) {
    CUMNIST_CHECK(image.width > 0 && image.height > 0 && image.channels >= 1 && image.channels <= 4,
                  "cannot encode a {} x {} image of {} channels as PNG", image.width, image.height, image.channels);
    CUMNIST_CHECK(image.pixels.size() == static_cast<std::size_t>(image.width) * image.height * image.channels,
                  "image of {} x {} x {} holds {} bytes", image.width, image.height, image.channels, image.pixels.size());
    std::vector<uint8_t> out;
    auto append = [](void* context, void* data, int size) {
        auto* v = static_cast<std::vector<uint8_t>*>(context);
        const auto* p = static_cast<const uint8_t*>(data);
        v->insert(v->end(), p, p + size);
    };
    if (!stbi_write_png_to_func(append, &out, image.width, image.height, image.channels, image.pixels.data(),
                                image.width * image.channels))
        throw Error(fmt::format("cannot encode a {} x {} image as PNG", image.width, image.height));
    return out;
}

void write_png(const std::string& path, const Image& image) {
    const std::vector<uint8_t> png = encode_png(image);
    write_file_atomically(path, std::string_view(reinterpret_cast<const char*>(png.data()), png.size()));
}

std::vector<float> resize_gray(const std::vector<float>& pixels, int width, int height, int out_width, int out_height) {
    CUMNIST_CHECK(width > 0 && height > 0 && out_width > 0 && out_height > 0 &&
                      pixels.size() == static_cast<std::size_t>(width) * height,
                  "resize of {} pixels as {} x {} to {} x {}", pixels.size(), width, height, out_width, out_height);
    std::vector<float> out(static_cast<std::size_t>(out_width) * out_height);
    const int ok = stbir_resize_float_generic(pixels.data(), width, height, 0, out.data(), out_width, out_height, 0, 1,
                                              STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_ZERO, STBIR_FILTER_DEFAULT,
                                              STBIR_COLORSPACE_LINEAR, nullptr);
    if (!ok) throw Error(fmt::format("cannot resize a {} x {} image to {} x {}", width, height, out_width, out_height));
    for (float& v : out) v = std::clamp(v, 0.0f, 1.0f);  // the filters' negative lobes overshoot slightly
    return out;
}

// ---- MNIST-style preprocessing ---------------------------------------------------------------
//
// MNIST's digits were made from NIST's black-and-white scans like this (LeCun et al.): each digit
// was size-normalised to fit a 20 × 20 box keeping its aspect ratio, with anti-aliasing (hence the
// grey levels), then placed in a 28 × 28 field so that its centre of mass is at the centre. Ink is
// light (255) on black (0). preprocess_digit repeats that on an arbitrary picture:
//
//   1. Grayscale: luminance Y = 0.299 R + 0.587 G + 0.114 B, in [0, 1]. Transparent pixels are
//      composited over a background that contrasts with the opaque ink (white under dark ink,
//      black under light ink), so a digit drawn on a transparent canvas keeps its strokes.
//   2. Polarity: the background is the median of the border pixels (robust to ink touching the
//      edge). If the darkest pixel lies further below it than the lightest lies above it, the ink
//      is dark on a light background and the image is inverted, so ink is always the light side.
//   3. Contrast: grey levels are stretched so the background maps to 0 and the brightest ink to 1;
//      what falls below kNoiseFloor (paper texture, JPEG ringing) becomes 0. Less than kMinContrast
//      between ink and background means there is no digit to find: an error.
//   4. Crop to the bounding box of the ink (pixels of at least kInkThreshold).
//   5. Scale the crop so its longer side is 20 pixels, the other in proportion (at least 1), with
//      an anti-aliasing filter; then stretch again so the brightest pixel is 1, as in MNIST, where
//      every digit reaches 255 (shrinking a large picture dims thin strokes).
//   6. Place the 20 × 20-bounded box in the 28 × 28 field so that its intensity-weighted centre of
//      mass falls on pixel (14, 14) in row/column index coordinates, where MNIST's test digits have
//      theirs (mean 13.99, 14.01; 98 % within half a pixel), moved by whole pixels as MNIST was. The
//      shift is limited so the box stays inside the field (MNIST's digits never needed that).
//   7. Quantise to bytes: round(255 · v).
//
// Framing::Fashion follows Fashion-MNIST's recipe (Xiao et al.) for steps 5 and 6 instead: the
// longest edge is scaled to 28 and the box is centred in the field.

namespace {
constexpr double kMinContrast = 0.1;    // ~25 grey levels between background and the brightest ink
constexpr float kNoiseFloor = 0.1f;     // after stretching: below this is background
constexpr float kInkThreshold = 0.25f;  // after stretching: at least this is ink, for the bounding box
constexpr double kMnistCentre = 14.0;   // MNIST's centre of mass, in pixel-index coordinates
}  // namespace

Framing framing_for(const std::string& dataset) { return dataset == "fashion" ? Framing::Fashion : Framing::Mnist; }

std::vector<uint8_t> preprocess_digit(const Image& image, const std::string& name, PreprocessInfo* info, Framing framing) {
    const int w = image.width, h = image.height, ch = image.channels;
    CUMNIST_CHECK(w > 0 && h > 0 && ch >= 1 && ch <= 4 && image.pixels.size() == static_cast<std::size_t>(w) * h * ch,
                  "'{}': image of {} x {} x {} holds {} bytes", name, w, h, ch, image.pixels.size());
    const std::size_t n = static_cast<std::size_t>(w) * h;
    const uint8_t* p = image.pixels.data();
    PreprocessInfo meta;

    // 1. Grayscale, with transparency composited over a contrasting background.
    std::vector<float> g(n), alpha(n, 1.0f);
    const bool has_alpha = ch == 2 || ch == 4;
    for (std::size_t i = 0; i < n; ++i) {
        const uint8_t* px = p + i * ch;
        g[i] = ch >= 3 ? (0.299f * px[0] + 0.587f * px[1] + 0.114f * px[2]) / 255.0f : px[0] / 255.0f;
        if (has_alpha) alpha[i] = px[ch - 1] / 255.0f;
    }
    if (has_alpha) {
        double sum_a = 0, sum_ay = 0;
        for (std::size_t i = 0; i < n; ++i) sum_a += alpha[i], sum_ay += static_cast<double>(alpha[i]) * g[i];
        if (sum_a == 0) throw Error(fmt::format("'{}': no digit found: the image is fully transparent", name));
        const float under = sum_a > 0 && sum_ay / sum_a < 0.5 ? 1.0f : 0.0f;  // white under dark ink
        for (std::size_t i = 0; i < n; ++i) g[i] = alpha[i] * g[i] + (1.0f - alpha[i]) * under;
    }

    // 2. Polarity from the border's median and the extremes.
    std::vector<float> border;
    border.reserve(2 * static_cast<std::size_t>(w + h));
    for (int x = 0; x < w; ++x) border.push_back(g[x]), border.push_back(g[static_cast<std::size_t>(h - 1) * w + x]);
    for (int y = 1; y + 1 < h; ++y) border.push_back(g[static_cast<std::size_t>(y) * w]), border.push_back(g[static_cast<std::size_t>(y) * w + w - 1]);
    std::nth_element(border.begin(), border.begin() + static_cast<std::ptrdiff_t>(border.size() / 2), border.end());
    float background = border[border.size() / 2];
    const auto [lo_it, hi_it] = std::minmax_element(g.begin(), g.end());
    float lo = *lo_it, hi = *hi_it;
    if (background - lo > hi - background) {
        for (float& v : g) v = 1.0f - v;
        background = 1.0f - background;
        std::swap(lo, hi);
        lo = 1.0f - lo;
        hi = 1.0f - hi;
        meta.inverted = true;
    }
    meta.background = background;
    meta.ink = hi;

    // 3. Contrast stretch; too little contrast means no digit.
    const double contrast = static_cast<double>(hi) - background;
    if (contrast < kMinContrast) {
        if (hi == lo)
            throw Error(fmt::format("'{}': no digit found: every pixel has grey level {:.0f}", name,
                                    (meta.inverted ? 1.0 - hi : hi) * 255.0));
        throw Error(fmt::format("'{}': no digit found: ink and background differ by {:.0f} grey levels, "
                                "at least {:.0f} expected",
                                name, contrast * 255.0, kMinContrast * 255.0));
    }
    for (float& v : g) {
        v = static_cast<float>((v - background) / contrast);
        v = v < kNoiseFloor ? 0.0f : std::min(v, 1.0f);
    }

    // 4. The ink's bounding box (not empty: the brightest pixel is 1).
    int x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            if (g[static_cast<std::size_t>(y) * w + x] >= kInkThreshold)
                x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    const int cw = x1 - x0 + 1, chh = y1 - y0 + 1;
    std::vector<float> crop(static_cast<std::size_t>(cw) * chh);
    for (int y = 0; y < chh; ++y)
        std::copy_n(g.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(y0 + y) * w + x0), cw,
                    crop.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(y) * cw));
    meta.crop_x = x0, meta.crop_y = y0, meta.crop_width = cw, meta.crop_height = chh;

    // 5. Scale to fit 20 × 20 (28 × 28) keeping the aspect ratio, then bring the brightest pixel back to 1.
    const int fit = framing == Framing::Fashion ? kMnistSide : kMnistBox;
    const double s = static_cast<double>(fit) / std::max(cw, chh);
    const int bw = std::clamp(static_cast<int>(std::lround(cw * s)), 1, fit);
    const int bh = std::clamp(static_cast<int>(std::lround(chh * s)), 1, fit);
    std::vector<float> box = resize_gray(crop, cw, chh, bw, bh);
    const float peak = *std::max_element(box.begin(), box.end());
    if (peak > 0)
        for (float& v : box) v /= peak;
    meta.box_width = bw, meta.box_height = bh;

    // 6. Centre of mass to (14, 14), by whole pixels, keeping the box inside the field.
    double mass = 0, mx = 0, my = 0;
    for (int y = 0; y < bh; ++y)
        for (int x = 0; x < bw; ++x) {
            const double v = box[static_cast<std::size_t>(y) * bw + x];
            mass += v, mx += v * x, my += v * y;
        }
    const double cx = mass > 0 ? mx / mass : (bw - 1) / 2.0, cy = mass > 0 ? my / mass : (bh - 1) / 2.0;
    int ox = std::clamp(static_cast<int>(std::lround(kMnistCentre - cx)), 0, kMnistSide - bw);
    int oy = std::clamp(static_cast<int>(std::lround(kMnistCentre - cy)), 0, kMnistSide - bh);
    if (framing == Framing::Fashion) ox = (kMnistSide - bw) / 2, oy = (kMnistSide - bh) / 2;  // the box centred
    meta.offset_x = ox, meta.offset_y = oy;

    // 7. Bytes.
    std::vector<uint8_t> out(static_cast<std::size_t>(kMnistSide) * kMnistSide, 0);
    for (int y = 0; y < bh; ++y)
        for (int x = 0; x < bw; ++x)
            out[static_cast<std::size_t>(oy + y) * kMnistSide + ox + x] =
                static_cast<uint8_t>(std::lround(255.0f * box[static_cast<std::size_t>(y) * bw + x]));
    if (info) *info = meta;
    return out;
}

// ---- The 5×7 font ----------------------------------------------------------------------------
//
// Printable ASCII, each glyph 7 rows of 5 columns ('#' set), drawn in a 6 × 10 cell: capitals and
// digits fill rows 0-6 (the baseline is under row 6), g p q y are drawn 2 rows lower so their tails
// hang below it, then one column and one row of spacing.

namespace {

struct Glyph {
    char c;
    const char* rows[7];
    int drop = 0;  // rows the glyph is drawn below the line's top: descenders (g, p, q, y, and , ;)
};

constexpr Glyph kGlyphs[] = {
    {' ', {".....", ".....", ".....", ".....", ".....", ".....", "....."}},
    {'!', {"..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#.."}},
    {'"', {".#.#.", ".#.#.", ".#.#.", ".....", ".....", ".....", "....."}},
    {'#', {".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."}},
    {'$', {"..#..", ".####", "#.#..", ".###.", "..#.#", "####.", "..#.."}},
    {'%', {"##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"}},
    {'&', {".##..", "#..#.", "#.#..", ".#...", "#.#.#", "#..#.", ".##.#"}},
    {'\'', {"..#..", "..#..", ".#...", ".....", ".....", ".....", "....."}},
    {'(', {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."}},
    {')', {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."}},
    {'*', {".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", "....."}},
    {'+', {".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."}},
    {',', {".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."}, 1},
    {'-', {".....", ".....", ".....", "#####", ".....", ".....", "....."}},
    {'.', {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."}},
    {'/', {".....", "....#", "...#.", "..#..", ".#...", "#....", "....."}},
    {'0', {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."}},
    {'1', {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'2', {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"}},
    {'3', {"#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."}},
    {'4', {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."}},
    {'5', {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."}},
    {'6', {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."}},
    {'7', {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."}},
    {'8', {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."}},
    {'9', {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."}},
    {':', {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."}},
    {';', {".....", ".##..", ".##..", ".....", ".##..", "..#..", ".#..."}, 1},
    {'<', {"...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#."}},
    {'=', {".....", ".....", "#####", ".....", "#####", ".....", "....."}},
    {'>', {".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#..."}},
    {'?', {".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."}},
    {'@', {".###.", "#...#", "....#", ".##.#", "#.#.#", "#.#.#", ".###."}},
    {'A', {".###.", "#...#", "#...#", "#...#", "#####", "#...#", "#...#"}},
    {'B', {"####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."}},
    {'C', {".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."}},
    {'D', {"###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."}},
    {'E', {"#####", "#....", "#....", "####.", "#....", "#....", "#####"}},
    {'F', {"#####", "#....", "#....", "####.", "#....", "#....", "#...."}},
    {'G', {".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"}},
    {'H', {"#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"}},
    {'I', {".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'J', {"..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."}},
    {'K', {"#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"}},
    {'L', {"#....", "#....", "#....", "#....", "#....", "#....", "#####"}},
    {'M', {"#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"}},
    {'N', {"#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"}},
    {'O', {".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
    {'P', {"####.", "#...#", "#...#", "####.", "#....", "#....", "#...."}},
    {'Q', {".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"}},
    {'R', {"####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"}},
    {'S', {".####", "#....", "#....", ".###.", "....#", "....#", "####."}},
    {'T', {"#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."}},
    {'U', {"#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
    {'V', {"#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."}},
    {'W', {"#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."}},
    {'X', {"#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"}},
    {'Y', {"#...#", "#...#", "#...#", ".#.#.", "..#..", "..#..", "..#.."}},
    {'Z', {"#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"}},
    {'[', {".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###."}},
    {'\\', {".....", "#....", ".#...", "..#..", "...#.", "....#", "....."}},
    {']', {".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###."}},
    {'^', {"..#..", ".#.#.", "#...#", ".....", ".....", ".....", "....."}},
    {'_', {".....", ".....", ".....", ".....", ".....", ".....", "#####"}},
    {'`', {".#...", "..#..", "...#.", ".....", ".....", ".....", "....."}},
    {'a', {".....", ".....", ".###.", "....#", ".####", "#...#", ".####"}},
    {'b', {"#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####."}},
    {'c', {".....", ".....", ".###.", "#....", "#....", "#...#", ".###."}},
    {'d', {"....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####"}},
    {'e', {".....", ".....", ".###.", "#...#", "#####", "#....", ".###."}},
    {'f', {"..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#..."}},
    {'g', {".####", "#...#", "#...#", "#...#", ".####", "....#", ".###."}, 2},
    {'h', {"#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#"}},
    {'i', {"..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."}},
    {'j', {"...#.", ".....", "..##.", "...#.", "...#.", "#..#.", ".##.."}},
    {'k', {"#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."}},
    {'l', {".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'m', {".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#"}},
    {'n', {".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"}},
    {'o', {".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."}},
    {'p', {"####.", "#...#", "#...#", "#...#", "####.", "#....", "#...."}, 2},
    {'q', {".####", "#...#", "#...#", "#...#", ".####", "....#", "....#"}, 2},
    {'r', {".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."}},
    {'s', {".....", ".....", ".###.", "#....", ".###.", "....#", "####."}},
    {'t', {".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."}},
    {'u', {".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#"}},
    {'v', {".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."}},
    {'w', {".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#."}},
    {'x', {".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"}},
    {'y', {"#...#", "#...#", "#...#", "#...#", ".####", "....#", ".###."}, 2},
    {'z', {".....", ".....", "#####", "...#.", "..#..", ".#...", "#####"}},
    {'{', {"...#.", "..#..", "..#..", ".#...", "..#..", "..#..", "...#."}},
    {'|', {"..#..", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."}},
    {'}', {".#...", "..#..", "..#..", "...#.", "..#..", "..#..", ".#..."}},
    {'~', {".....", ".....", ".#...", "#.#.#", "...#.", ".....", "....."}},
};
constexpr int kGlyphW = 5, kGlyphH = 7, kCellW = 6, kCellH = 10;

// The glyph for c, '?' for anything outside printable ASCII.
const Glyph& glyph(char c) {
    static const std::array<const Glyph*, 128> table = [] {
        std::array<const Glyph*, 128> t{};
        for (const Glyph& g : kGlyphs) t[static_cast<unsigned char>(g.c)] = &g;
        return t;
    }();
    const auto u = static_cast<unsigned char>(c);
    const Glyph* g = u < 128 ? table[u] : nullptr;
    return g ? *g : *table['?'];
}

void fill_rect(Image& rgb, int x, int y, int w, int h, Rgb color) {
    const int xa = std::max(x, 0), ya = std::max(y, 0);
    const int xb = std::min(x + w, rgb.width), yb = std::min(y + h, rgb.height);
    for (int yy = ya; yy < yb; ++yy)
        for (int xx = xa; xx < xb; ++xx) {
            uint8_t* px = &rgb.pixels[(static_cast<std::size_t>(yy) * rgb.width + xx) * 3];
            px[0] = color.r, px[1] = color.g, px[2] = color.b;
        }
}

}  // namespace

int text_width(const std::string& text, int text_scale) {
    return text.empty() ? 0 : (static_cast<int>(text.size()) * kCellW - (kCellW - kGlyphW)) * text_scale;
}

void draw_text(Image& rgb, int x, int y, const std::string& text, Rgb color, int text_scale) {
    CUMNIST_CHECK(rgb.channels == 3, "draw_text on an image of {} channels, expected RGB", rgb.channels);
    for (std::size_t i = 0; i < text.size(); ++i) {
        const Glyph& g = glyph(text[i]);
        const int gx = x + static_cast<int>(i) * kCellW * text_scale;
        for (int r = 0; r < kGlyphH; ++r)
            for (int c = 0; c < kGlyphW; ++c)
                if (g.rows[r][c] == '#')
                    fill_rect(rgb, gx + c * text_scale, y + (r + g.drop) * text_scale, text_scale, text_scale, color);
    }
}

// ---- Grids -----------------------------------------------------------------------------------

DigitTile make_tile(const Dataset& ds, int index, std::vector<CaptionLine> caption) {
    CUMNIST_CHECK(index >= 0 && index < ds.n, "image {} of '{}', which holds {}", index, ds.name, ds.n);
    DigitTile t;
    t.rows = ds.rows;
    t.cols = ds.cols;
    const auto first = ds.images.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(index) * ds.features());
    t.pixels.assign(first, first + ds.features());
    t.caption = std::move(caption);
    return t;
}

Image render_digit_grid(const std::vector<DigitTile>& tiles, const GridOptions& o) {
    if (tiles.empty()) throw Error("digit grid: no images to draw");
    if (o.columns < 1 || o.scale < 1 || o.scale > 64 || o.text_scale < 1 || o.text_scale > 16 || o.margin < 0 || o.gap < 0)
        throw Error(fmt::format("digit grid: bad layout (columns {}, scale {}, text scale {}, margin {}, gap {})", o.columns,
                                o.scale, o.text_scale, o.margin, o.gap));
    // The cell: as wide as the widest image or caption line, as tall as the tallest image plus the
    // most caption lines.
    int img_w = 0, img_h = 0, text_w = 0, lines = 0;
    for (std::size_t i = 0; i < tiles.size(); ++i) {
        const DigitTile& t = tiles[i];
        if (t.rows < 1 || t.cols < 1 || t.rows > 4096 || t.cols > 4096 ||
            t.pixels.size() != static_cast<std::size_t>(t.rows) * t.cols)
            throw Error(fmt::format("digit grid: image {} is {} x {} but holds {} pixels", i, t.rows, t.cols, t.pixels.size()));
        img_w = std::max(img_w, t.cols * o.scale);
        img_h = std::max(img_h, t.rows * o.scale);
        lines = std::max(lines, static_cast<int>(t.caption.size()));
        for (const CaptionLine& l : t.caption) text_w = std::max(text_w, text_width(l.text, o.text_scale));
    }
    const int line_h = kCellH * o.text_scale;
    const int caption_h = lines > 0 ? lines * line_h + 2 * o.text_scale : 0;  // + the space above the image
    const int cell_w = std::max(img_w, text_w), cell_h = caption_h + img_h;
    const int n = static_cast<int>(tiles.size());
    const int columns = std::min(o.columns, n), grid_rows = (n + columns - 1) / columns;
    const int title_h = o.title.empty() ? 0 : line_h + o.gap / 2;
    const double width = 2.0 * o.margin + static_cast<double>(columns) * cell_w + (columns - 1.0) * o.gap;
    const double height = 2.0 * o.margin + title_h + static_cast<double>(grid_rows) * cell_h + (grid_rows - 1.0) * o.gap;
    const double width_all = std::max(width, 2.0 * o.margin + text_width(o.title, o.text_scale));
    if (width_all * height > 100e6)
        throw Error(fmt::format("digit grid: {} images would make a {:.0f} x {:.0f} picture, over 100 megapixels", n,
                                width_all, height));

    Image rgb;
    rgb.width = static_cast<int>(width_all);
    rgb.height = static_cast<int>(height);
    rgb.channels = 3;
    rgb.pixels.assign(static_cast<std::size_t>(rgb.width) * rgb.height * 3, 255);
    if (!o.title.empty()) draw_text(rgb, o.margin, o.margin, o.title, Rgb{32, 32, 32}, o.text_scale);

    for (int i = 0; i < n; ++i) {
        const DigitTile& t = tiles[i];
        const int cx = o.margin + (i % columns) * (cell_w + o.gap);
        const int cy = o.margin + title_h + (i / columns) * (cell_h + o.gap);
        // Caption lines, centred over the cell, bottom-aligned on the image.
        const int first_line = lines - static_cast<int>(t.caption.size());
        for (std::size_t l = 0; l < t.caption.size(); ++l) {
            const CaptionLine& line = t.caption[l];
            draw_text(rgb, cx + (cell_w - text_width(line.text, o.text_scale)) / 2,
                      cy + (first_line + static_cast<int>(l)) * line_h, line.text, line.color, o.text_scale);
        }
        // The image, nearest-neighbour enlarged, white ink on black (matplotlib's gray map).
        const int ix = cx + (cell_w - t.cols * o.scale) / 2, iy = cy + caption_h;
        for (int r = 0; r < t.rows; ++r)
            for (int c = 0; c < t.cols; ++c) {
                const uint8_t v = t.pixels[static_cast<std::size_t>(r) * t.cols + c];
                fill_rect(rgb, ix + c * o.scale, iy + r * o.scale, o.scale, o.scale, Rgb{v, v, v});
            }
    }
    return rgb;
}

void write_digit_grid(const std::string& path, const std::vector<DigitTile>& tiles, const GridOptions& options) {
    Image picture;
    try {
        picture = render_digit_grid(tiles, options);
    } catch (const Error& e) {
        throw Error(fmt::format("cannot draw '{}': {}", path, e.what()));
    }
    write_png(path, picture);
}

std::vector<std::string> class_names(const std::string& dataset) {
    if (dataset == "fashion")
        return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
    return {};
}

void write_misclassified_grid(const std::string& path, const Dataset& ds, const std::vector<int>& indices,
                              const std::vector<int>& predicted, int max_tiles,
                              const std::vector<std::string>& names) {
    if (indices.empty()) throw Error(fmt::format("'{}': no misclassified images to draw", path));
    CUMNIST_CHECK(indices.size() == predicted.size(), "{} indices but {} predictions", indices.size(), predicted.size());
    CUMNIST_CHECK(max_tiles >= 1, "max_tiles is {}", max_tiles);
    const int shown = std::min(max_tiles, static_cast<int>(indices.size()));
    auto label = [&](const char* prefix, int k) {
        const bool named = k >= 0 && k < static_cast<int>(names.size());
        return fmt::format("{} {}{}{}", prefix, k, named ? " " : "", named ? names[k] : "");
    };
    std::vector<DigitTile> tiles;
    tiles.reserve(shown);
    for (int i = 0; i < shown; ++i) {
        const int index = indices[i];
        tiles.push_back(make_tile(ds, index,
                                  {{label("true", ds.labels.at(index)), Rgb{32, 32, 32}},
                                   {label("pred", predicted[i]), Rgb{200, 0, 0}}}));
    }
    GridOptions o;
    o.columns = names.empty() ? 10 : 6;
    o.title = fmt::format("{}: {} of {} images misclassified{}", ds.name, indices.size(), ds.n,
                          shown < static_cast<int>(indices.size()) ? fmt::format("; the first {}", shown) : "");
    write_digit_grid(path, tiles, o);
}

}  // namespace cumnist
