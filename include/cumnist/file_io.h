// Writing output files so that a failure (a full disk, a file-size limit, an I/O error) never
// leaves a partial file under the final name nor destroys the previous one.
#pragma once

#include <string>
#include <string_view>

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

}  // namespace cumnist
