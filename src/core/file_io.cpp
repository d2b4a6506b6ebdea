// Output files written through a temporary file, fsync and a rename, with every failure reported.
#include "cumnist/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "cumnist/data.h"
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

// Writes all of `bytes` to fd, retrying short writes and EINTR: 0, or the errno of the failure.
int write_all(int fd, std::string_view bytes) {
    for (std::size_t done = 0; done < bytes.size();) {
        const std::size_t chunk = std::min<std::size_t>(bytes.size() - done, std::size_t{1} << 30);
        const ssize_t n = ::write(fd, bytes.data() + done, chunk);
        if (n > 0)
            done += static_cast<std::size_t>(n);
        else if (n < 0 && errno != EINTR)
            return errno;
        else if (n == 0)
            return EIO;
    }
    return 0;
}

const char* kind_of(mode_t mode) {
    if (S_ISDIR(mode)) return "a folder";
    if (S_ISFIFO(mode)) return "a FIFO (a named pipe)";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

// Where a chain of symbolic links ends (the path itself when it is no link): the file a write
// through `path` must replace. A dangling link's target is where the new file goes.
std::string link_target(const std::string& path) {
    namespace fs = std::filesystem;
    fs::path p = path;
    std::error_code ec;
    for (int hops = 0; hops < 40 && fs::is_symlink(fs::symlink_status(p, ec)); ++hops) {
        const fs::path target = fs::read_symlink(p, ec);
        if (ec) break;
        p = target.is_absolute() ? target : p.parent_path() / target;
    }
    return p.string();
}

// Devices, FIFOs and sockets: opened for writing as they are and written through.
void write_in_place(const std::string& path, std::string_view bytes, std::string_view what) {
    // Non-blocking open: a FIFO without a reader fails with ENXIO instead of waiting for one.
    const int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        const int e = errno;
        throw Error(fmt::format("cannot write {}'{}': {}", what, path,
                                e == ENXIO ? "it is a FIFO that nothing reads" : std::strerror(e)));
    }
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0) (void)::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    int err = write_all(fd, bytes);
    if (::close(fd) != 0 && err == 0) err = errno;
    if (err != 0) throw Error(fmt::format("cannot write {}'{}': {}", what, path, std::strerror(err)));
}

}  // namespace

void require_regular_input(const std::string& path, std::string_view expected) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw Error(fmt::format("cannot open '{}': {}", path, std::strerror(errno)));
    if (S_ISDIR(st.st_mode)) throw Error(fmt::format("'{}' is a folder, expected {}", path, expected));
    if (!S_ISREG(st.st_mode))
        throw Error(fmt::format("'{}' is {}, not a regular file; expected {}", path, kind_of(st.st_mode), expected));
}

void require_writable(const std::string& given, std::string_view option) {
    struct stat st {};
    if (::stat(given.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
        if (S_ISDIR(st.st_mode)) throw Error(fmt::format("{}: '{}' is a folder, expected a file", option, given));
        return;  // a device, FIFO or socket: written in place
    }
    const std::string path = link_target(given);
    const std::string tmp = path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) throw Error(fmt::format("{}: cannot write '{}': {}", option, tmp, std::strerror(errno)));
    (void)::close(fd);
    ::unlink(tmp.c_str());
}

void write_file_atomically(const std::string& given, std::string_view bytes, std::string_view what) {
    struct stat st {};
    if (::stat(given.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
        if (S_ISDIR(st.st_mode)) throw Error(fmt::format("cannot write {}'{}': it is a folder", what, given));
        write_in_place(given, bytes, what);
        return;
    }
    const std::string path = link_target(given);
    const std::string tmp = path + ".tmp";
    std::error_code ec;
    const bool existed = std::filesystem::exists(path, ec);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        throw Error(fmt::format("cannot write {}'{}': cannot create '{}': {}", what, path, tmp, std::strerror(errno)));
    // A full disk or a file-size limit shows up as a short or failed write(), or only at fsync()
    // or close() (network and delayed-allocation file systems): each one is checked.
    int err = write_all(fd, bytes);
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

void require_distinct(const std::vector<NamedPath>& outputs, const std::vector<NamedPath>& inputs) {
    // A file is the same as another when both exist with the same device and inode (hard links,
    // links, different spellings), or, for outputs that do not exist yet, when their paths are the
    // same after resolving what does exist (two flags naming one new file).
    struct Key {
        bool exists = false;
        dev_t dev = 0;
        ino_t ino = 0;
        std::string path;
        bool same(const Key& o) const { return exists && o.exists ? dev == o.dev && ino == o.ino : path == o.path; }
    };
    auto key_of = [](const std::string& path) {
        Key k;
        std::error_code ec;
        k.path = std::filesystem::weakly_canonical(path, ec).string();
        if (ec) k.path = path;
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0) {
            k.exists = true;
            k.dev = st.st_dev;
            k.ino = st.st_ino;
            if (!S_ISREG(st.st_mode)) k.path.clear(), k.exists = false;  // a device or FIFO: nothing to overwrite
        }
        return k;
    };
    std::vector<std::pair<const NamedPath*, Key>> seen;  // the outputs checked so far
    for (const NamedPath& out : outputs) {
        if (out.path.empty()) continue;
        const Key o = key_of(out.path);
        if (o.path.empty() && !o.exists) continue;
        for (const NamedPath& in : inputs) {
            if (in.path.empty()) continue;
            const Key i = key_of(in.path);
            if (i.exists && o.same(i))
                throw Error(fmt::format("{} '{}' is the file given as {}; an output must not overwrite an input",
                                        out.name, out.path, in.name));
        }
        for (const auto& [other, k] : seen)
            if (o.same(k))
                throw Error(fmt::format("{} '{}' and {} '{}' are the same file", other->name, other->path, out.name,
                                        out.path));
        seen.emplace_back(&out, o);
    }
}

std::vector<NamedPath> dataset_inputs(const std::string& data_dir, const std::string& dataset) {
    std::vector<NamedPath> files;
    std::string dir;
    try {
        dir = dataset_folder(data_dir, dataset);
    } catch (const Error&) {
        return files;  // no data set there: loading it reports that, with the reason
    }
    for (const char* name : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                             "t10k-labels-idx1-ubyte"})
        for (const char* suffix : {"", ".gz"}) {
            const std::string path = dir + "/" + name + suffix;
            struct stat st {};
            if (::stat(path.c_str(), &st) == 0) files.push_back({"a data file (" + dataset + ")", path});
        }
    return files;
}

}  // namespace cumnist
