// MNIST-format data: the IDX reader (raw or gzip), the validated in-memory Dataset, the data
// folder layout, and the per-epoch sample order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cumnist {

// An IDX file of unsigned bytes: dims (e.g. {60000, 28, 28} or {60000}) and the data.
struct IdxArray {
    std::vector<uint32_t> dims;
    std::vector<uint8_t> data;
};

// Reads an IDX file of type 0x08 (unsigned byte), raw or gzip-compressed (detected by content).
// Validates the magic, the element type, the number of dimensions (`expected_rank`), and that the
// data size matches the header exactly, before allocating; each failure throws cumnist::Error
// naming the file, what was expected and what was found.
IdxArray read_idx(const std::string& path, int expected_rank);
// The same over bytes already in memory (`name` is used in messages).
IdxArray parse_idx(const std::string& name, const uint8_t* bytes, std::size_t size, int expected_rank);

struct Dataset {
    std::string name;
    int n = 0, rows = 0, cols = 0;
    std::vector<uint8_t> images;  // n × rows × cols, row-major
    std::vector<uint8_t> labels;  // n, each < classes
    int features() const { return rows * cols; }
};

// Pairs an image file and a label file into a Dataset: counts must agree, labels < classes.
Dataset load_idx_pair(const std::string& images_path, const std::string& labels_path, int classes = 10);

enum class Split { Train, Test };

// The folder that holds `dataset`'s four IDX files (under their original names, raw or with
// ".gz"): data_dir/<dataset> (the layout scripts/fetch_data.sh writes), or data_dir itself when it
// holds them (`--data ~/.cache/cumnist/mnist`; a folder named after the other data set, "mnist" or
// "fashion", is refused as holding that one). Anything else is an error that says what
// data_dir is (missing, a file, a folder without the files) and how to fetch the data.
std::string dataset_folder(const std::string& data_dir, const std::string& dataset);

// Loads one split from dataset_folder(data_dir, dataset).
Dataset load_dataset(const std::string& data_dir, const std::string& dataset, Split split);

// $CUMNIST_DATA, else $XDG_CACHE_HOME/cumnist, else ~/.cache/cumnist.
std::string default_data_dir();

// A validation split: `fraction` of each class of `ds` held out (round(fraction · its count),
// chosen by Philox under `seed`, a stream of their own: the same on every platform), both parts in
// the data set's order. `validation_indices` are the held-out samples' indices in `ds`. Throws
// Error for a fraction outside (0, 1) or a part left empty.
struct ValidationSplit {
    Dataset train, validation;
    std::vector<int32_t> validation_indices;
};
ValidationSplit split_validation(const Dataset& ds, double fraction, uint64_t seed, int classes = 10);

// A permutation of 0..n-1 for `epoch`, from Philox under `seed` (Fisher–Yates): the same on every
// platform and independent of how many epochs ran before.
std::vector<int32_t> epoch_order(int n, uint64_t seed, uint64_t epoch);

}  // namespace cumnist
