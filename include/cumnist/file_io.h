// Writing output files so that a failure (a full disk, a file-size limit, an I/O error) never
// leaves a partial file under the final name nor destroys the previous one.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace cumnist {

// Writing output files so that nothing but the intended file changes:
//   - a regular file, or a new path: `bytes` go to "<path>.tmp", are flushed to disk (fsync), and
//     the temporary file is renamed over `path`: a reader never sees a partial file;
//   - a symbolic link: the same for the file it points to (the link stays a link);
//   - a character device, FIFO or socket (/dev/null, /dev/stdout, /proc/self/fd/N, a named pipe):
//     written through in place, never replaced (a FIFO without a reader is an error, not a hang);
//   - a folder: refused.
// For a regular file: Every failure (open, write, fsync, close, rename) removes the
// temporary file, leaves an existing `path` as it was, and throws cumnist::Error naming `path` and
// the OS's reason: "cannot write <what>'<path>': File too large; the existing file is unchanged"
// (`what` is e.g. "checkpoint "), or "cannot replace <what>'<path>': ..." when the rename fails.
void write_file_atomically(const std::string& path, std::string_view bytes, std::string_view what = {});

// Checks, before a long run, that write_file_atomically(path, ...) will be able to write: a folder
// is refused ("<option>: '<path>' is a folder, expected a file"); for a regular file or a new path
// (a link's target) it creates and removes "<path>.tmp", or throws cumnist::Error
// "<option>: cannot write '<path>.tmp': <reason>"; a device, FIFO or socket passes.
void require_writable(const std::string& path, std::string_view option);

// Inputs are read with their size known up front: anything but a regular file (following links) is
// refused before it is opened, so a FIFO cannot block the read and /dev/zero cannot pass as empty.
// Throws cumnist::Error "'<path>' is a folder, expected <expected>" or "'<path>' is a FIFO (a named
// pipe), not a regular file; expected <expected>" (a character device, a block device, a socket),
// or "cannot open '<path>': <reason>".
void require_regular_input(const std::string& path, std::string_view expected);

// A file a command reads or writes, and how the user named it: {"--json", "out.json"},
// {"--model", "runs/a/best.safetensors"}.
struct NamedPath {
    std::string name, path;
};

// Throws cumnist::Error when an output is one of the inputs (the same device and inode, after
// links; outputs that do not exist yet clash with nothing), or two outputs are the same file:
// "--json 'a/best.safetensors' is the file given as --model; an output must not overwrite an
// input". Called before any work starts.
void require_distinct(const std::vector<NamedPath>& outputs, const std::vector<NamedPath>& inputs);

// The IDX files of `dataset` under data_dir that exist (raw and .gz, train and test): the inputs
// of a command that reads the data set, for require_distinct.
std::vector<NamedPath> dataset_inputs(const std::string& data_dir, const std::string& dataset);

}  // namespace cumnist
