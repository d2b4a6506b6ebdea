// Image input and output: decoding PNG, JPEG, BMP and netpbm files (Debian's stb_image, plus a
// small reader for the ASCII netpbm variants it lacks), the MNIST-style preprocessing that turns
// any picture of one digit into the 28×28 input the models were trained on, PNG writing
// (stb_image_write), and the captioned digit-grid renderer with its built-in 5×7 font.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace cumnist {

struct Dataset;

// An 8-bit image: `height` rows of `width` pixels of `channels` bytes each (1 gray, 2 gray + alpha,
// 3 RGB, 4 RGBA), row-major, no padding.
struct Image {
    int width = 0, height = 0, channels = 0;
    std::vector<uint8_t> pixels;
};

// The largest image read_image decodes: 64 megapixels (a 8000 × 8000 photo). Checked against the
// header before any pixel memory is allocated.
constexpr std::size_t kMaxImagePixels = std::size_t{1} << 26;
// The largest file read_image reads: 256 MiB.
constexpr std::size_t kMaxImageFileBytes = std::size_t{256} << 20;

// Reads a PNG, JPEG, BMP or netpbm (PGM, PPM, PBM; binary or ASCII) file. The format is told by
// the content, not the name. 16-bit samples are reduced to 8. A missing, unreadable or empty file,
// a directory, another format, a corrupt or truncated image, or one larger than kMaxImagePixels
// throws cumnist::Error with one line naming the file.
Image read_image(const std::string& path);
// The same over bytes in memory (`name` is used in messages).
Image decode_image(const std::string& name, const uint8_t* bytes, std::size_t size);

// A PNG of `image` (1 to 4 channels).
std::vector<uint8_t> encode_png(const Image& image);
// Writes encode_png(image) through "<path>.tmp" and a rename. Throws Error naming the file.
void write_png(const std::string& path, const Image& image);

// Resamples a one-channel float image (row-major, values in [0, 1]) to out_width × out_height
// with stb_image_resize's default filters (Mitchell when shrinking, Catmull-Rom when enlarging;
// both anti-alias), pixels beyond the edges counted as 0. Results are clamped to [0, 1].
std::vector<float> resize_gray(const std::vector<float>& pixels, int width, int height, int out_width,
                               int out_height);

// ---- MNIST-style preprocessing ---------------------------------------------------------------

constexpr int kMnistSide = 28;  // the field
constexpr int kMnistBox = 20;   // the digit is scaled to fit a box this size

// What preprocess_digit found and did (for --json and tests).
struct PreprocessInfo {
    bool inverted = false;                // the background was light, so the image was inverted
    double background = 0, ink = 0;       // grey levels in [0, 1] (after inversion) of both
    int crop_x = 0, crop_y = 0;           // the ink's bounding box in the input
    int crop_width = 0, crop_height = 0;
    int box_width = 0, box_height = 0;    // the digit's size once scaled to fit 20 × 20 (28 × 28: Fashion)
    int offset_x = 0, offset_y = 0;       // where that box sits in the 28 × 28 field
};

// How the object is framed in the 28 × 28 field: as MNIST's digits were (scaled to fit 20 × 20,
// centre of mass at the centre), or as Fashion-MNIST's products were (longest edge scaled to 28,
// the box centred).
enum class Framing { Mnist, Fashion };
// Framing::Fashion for "fashion", else Framing::Mnist.
Framing framing_for(const std::string& dataset);

// Turns a picture of one digit, of any size and colour, into a 28 × 28 grayscale image prepared
// the way MNIST's were (light ink, 255, on a black background, 0, row-major), so a model trained
// on MNIST sees what it was trained on (or, with Framing::Fashion, a product photo the way
// Fashion-MNIST's were). The steps are documented in image.cpp. An image with no ink (uniform, or
// too little contrast to tell ink from background) throws Error naming `name`.
std::vector<uint8_t> preprocess_digit(const Image& image, const std::string& name, PreprocessInfo* info = nullptr,
                                      Framing framing = Framing::Mnist);

// ---- Pictures --------------------------------------------------------------------------------

struct Rgb {
    uint8_t r = 0, g = 0, b = 0;
};

// One line of a caption, in one colour.
struct CaptionLine {
    std::string text;  // printable ASCII; anything else is drawn as '?'
    Rgb color{32, 32, 32};
};

// One picture of a grid: a grayscale image as stored in MNIST (0 background, 255 ink; drawn as
// white ink on black like matplotlib's gray colour map) and its caption, drawn above it.
struct DigitTile {
    int rows = kMnistSide, cols = kMnistSide;
    std::vector<uint8_t> pixels;       // rows × cols
    std::vector<CaptionLine> caption;  // top to bottom; may be empty
};

struct GridOptions {
    int columns = 5;      // tiles per row
    int scale = 3;        // each image pixel becomes scale × scale pixels (nearest neighbour)
    int text_scale = 2;   // each font pixel becomes text_scale × text_scale pixels
    std::string title;    // a line above the grid; none when empty
    // Layout, in output pixels: `margin` around everything, `gap` between cells, 2 × text_scale
    // between a caption and its image. Every cell is as wide as the widest tile or caption line,
    // and as tall as the tallest tile plus the most caption lines.
    int margin = 12;
    int gap = 16;
};

// A tile for image `index` of `ds` with a one-line caption.
DigitTile make_tile(const Dataset& ds, int index, std::vector<CaptionLine> caption);

// The grid as an RGB image (white background, dark captions). Throws Error for no tiles, a tile
// whose pixel count is not rows × cols, bad options, or a picture over 100 megapixels.
Image render_digit_grid(const std::vector<DigitTile>& tiles, const GridOptions& options = {});
// render_digit_grid, written as a PNG through write_png; errors name `path`.
void write_digit_grid(const std::string& path, const std::vector<DigitTile>& tiles, const GridOptions& options = {});

// The misclassified-images picture of `cumnist eval --misclassified`: up to `max_tiles` of the
// images `indices` of `ds` (in that order), captioned "true 7" (dark) over "pred 2" (red), under a
// title saying how many there are in all. `predicted[i]` is the prediction for `indices[i]`;
// `class_names`, when not empty, adds each class's name (Fashion-MNIST). Throws Error when
// `indices` is empty or the sizes disagree.
void write_misclassified_grid(const std::string& path, const Dataset& ds, const std::vector<int>& indices,
                              const std::vector<int>& predicted, int max_tiles = 100,
                              const std::vector<std::string>& class_names = {});

// The names of a data set's classes: Fashion-MNIST's ten ("T-shirt/top", ..., "Ankle boot") for
// "fashion"; empty (the digits speak for themselves) otherwise.
std::vector<std::string> class_names(const std::string& dataset);

// Draws `text` with the built-in 5 × 7 font (6 × 10 cells, with room for descenders), each font
// pixel text_scale × text_scale, its top-left corner at (x, y) of an RGB image; clipped to it.
void draw_text(Image& rgb, int x, int y, const std::string& text, Rgb color, int text_scale);
// Width of `text` in pixels as draw_text draws it (no trailing column).
int text_width(const std::string& text, int text_scale);

}  // namespace cumnist
