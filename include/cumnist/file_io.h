// Writing output files so that a failure (a full disk, a file-size limit, an I/O error) never
// leaves a partial file under the final name nor destroys the previous one.
#pragma once

#include <string>
#include <string_view>

namespace cumnist {

// Writes `bytes` to "<path>.tmp", flushes it to disk (fsync), then renames it over `path`: a reader
// never sees a partial file. Every failure (open, write, fsync, close, rename) removes the
// temporary file, leaves an existing `path` as it was, and throws cumnist::Error naming `path` and
// the OS's reason: "cannot write <what>'<path>': File too large; the existing file is unchanged"
// (`what` is e.g. "checkpoint "), or "cannot replace <what>'<path>': ..." when the rename fails.
void write_file_atomically(const std::string& path, std::string_view bytes, std::string_view what = {});

// Checks, before a long run, that write_file_atomically(path, ...) will be able to create its
// temporary file: creates and removes "<path>.tmp", or throws cumnist::Error
// "<option>: cannot write '<path>.tmp': <reason>".
void require_writable(const std::string& path, std::string_view option);

}  // namespace cumnist
