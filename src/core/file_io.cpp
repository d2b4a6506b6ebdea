// Output files written through a temporary file, fsync and a rename, with every failure reported.
#include "cumnist/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "cumnist/error.h"

namespace cumnist {
namespace {

// Makes the rename itself durable. Best effort: some file systems cannot sync a folder, and the
// new file is complete and in place either way.
void sync_folder_of(const std::string& path) {
    std::string folder = std::filesystem::path(path).parent_path().string();
    if (folder.empty()) folder = ".";
    const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)::fsync(fd);
    (void)::close(fd);
}

}  // namespace

void require_writable(const std::string& path, std::string_view option) {
    const std::string tmp = path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) throw Error(fmt::format("{}: cannot write '{}': {}", option, tmp, std::strerror(errno)));
    (void)::close(fd);
    ::unlink(tmp.c_str());
}

void write_file_atomically(const std::string& path, std::string_view bytes, std::string_view what) {
    const std::string tmp = path + ".tmp";
    std::error_code ec;
    const bool existed = std::filesystem::exists(path, ec);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        throw Error(fmt::format("cannot write {}'{}': cannot create '{}': {}", what, path, tmp, std::strerror(errno)));
    // A full disk or a file-size limit shows up as a short or failed write(), or only at fsync()
    // or close() (network and delayed-allocation file systems): each one is checked.
    int err = 0;
    for (std::size_t done = 0; done < bytes.size() && err == 0;) {
        const std::size_t chunk = std::min<std::size_t>(bytes.size() - done, std::size_t{1} << 30);
        const ssize_t n = ::write(fd, bytes.data() + done, chunk);
        if (n > 0)
            done += static_cast<std::size_t>(n);
        else if (n < 0 && errno != EINTR)
            err = errno;
        else if (n == 0)
            err = EIO;
    }
    if (err == 0 && ::fsync(fd) != 0) err = errno;
    if (::close(fd) != 0 && err == 0) err = errno;
    if (err != 0) {
        ::unlink(tmp.c_str());
        throw Error(fmt::format("cannot write {}'{}': {}{}", what, path, std::strerror(err),
                                existed ? "; the existing file is unchanged" : ""));
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int e = errno;
        ::unlink(tmp.c_str());
        throw Error(fmt::format("cannot replace {}'{}': {}", what, path, std::strerror(e)));
    }
    sync_folder_of(path);
}

}  // namespace cumnist
