// The one writer of output files (write_file_atomically, require_writable) and the one check of
// input files (require_regular_input), against the kinds of paths users give: regular files,
// symbolic links (dangling or not), devices, FIFOs with and without a reader, /proc/self/fd/N and
// folders. And the readers that use them: a FIFO or a device given as a checkpoint or an IDX file
// is refused at once instead of blocking or passing as empty.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cumnist/checkpoint.h"
#include "cumnist/data.h"
#include "cumnist/error.h"
#include "cumnist/file_io.h"

namespace {

namespace fs = std::filesystem;
using cumnist::Error;

// A fresh folder per test.
class FileIo : public ::testing::Test {
protected:
    void SetUp() override {
        dir = fs::temp_directory_path() / ("cumnist_file_io_" + std::to_string(::getpid()) + "_" +
                                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir);
        fs::create_directories(dir);
    }
    void TearDown() override { fs::remove_all(dir); }
    std::string path(const std::string& name) const { return (dir / name).string(); }
    fs::path dir;
};

std::string contents(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string error_of(const std::function<void()>& call) {
    try {
        call();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

TEST_F(FileIo, RegularFileIsReplacedWhole) {
    const std::string p = path("a.json");
    cumnist::write_file_atomically(p, "first");
    cumnist::write_file_atomically(p, "second");
    EXPECT_EQ(contents(p), "second");
    EXPECT_FALSE(fs::exists(p + ".tmp"));
}

TEST_F(FileIo, SymlinkIsWrittenThroughToItsTargetAndStaysALink) {
    const std::string real = path("real.json"), link = path("link.json");
    cumnist::write_file_atomically(real, "old");
    fs::create_symlink("real.json", link);  // relative, as users make them
    cumnist::write_file_atomically(link, "new");
    EXPECT_TRUE(fs::is_symlink(link));
    EXPECT_EQ(contents(real), "new");
    // A chain of links, and a dangling one: the file is created where the chain ends.
    fs::create_symlink("link.json", path("link2.json"));
    cumnist::write_file_atomically(path("link2.json"), "newer");
    EXPECT_EQ(contents(real), "newer");
    fs::create_symlink("not-yet.json", path("dangling.json"));
    cumnist::write_file_atomically(path("dangling.json"), "created");
    EXPECT_TRUE(fs::is_symlink(path("dangling.json")));
    EXPECT_EQ(contents(path("not-yet.json")), "created");
    EXPECT_NO_THROW(cumnist::require_writable(link, "--json"));
    EXPECT_FALSE(fs::exists(real + ".tmp"));
}

TEST_F(FileIo, DevicesAreWrittenInPlaceNeverReplaced) {
    // /dev/null stays the character device (as root, a rename would have replaced it).
    cumnist::write_file_atomically("/dev/null", "discarded");
    struct stat st {};
    ASSERT_EQ(::stat("/dev/null", &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode));
    EXPECT_NO_THROW(cumnist::require_writable("/dev/null", "--metrics-out"));
    EXPECT_FALSE(fs::exists("/dev/null.tmp"));
    // /proc/self/fd/N, here a pipe: written through.
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    cumnist::write_file_atomically("/proc/self/fd/" + std::to_string(fds[1]), "through the pipe");
    char buf[64] = {};
    const ssize_t n = ::read(fds[0], buf, sizeof buf - 1);
    EXPECT_EQ(std::string(buf, n > 0 ? static_cast<std::size_t>(n) : 0), "through the pipe");
    ::close(fds[0]);
    ::close(fds[1]);
}

TEST_F(FileIo, FifoIsWrittenThroughToItsReaderAndFailsFastWithoutOne) {
    const std::string fifo = path("pipe");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    EXPECT_NE(error_of([&] { cumnist::write_file_atomically(fifo, "nobody", "metrics "); })
                  .find("cannot write metrics '" + fifo + "': it is a FIFO that nothing reads"),
              std::string::npos);
    std::string got;
    std::thread reader([&] { got = contents(fifo); });  // blocks until the writer opens
    // The reader's open may not have happened yet: retry until the write finds it.
    std::string err = "not tried";
    for (int i = 0; i < 500 && !err.empty(); ++i) {
        err = error_of([&] { cumnist::write_file_atomically(fifo, "streamed"); });
        if (!err.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!err.empty()) {  // never leave the reader blocked in its open: a writer's open and close release it
        const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
        if (fd >= 0) ::close(fd);
    }
    reader.join();
    EXPECT_EQ(err, "");
    EXPECT_EQ(got, "streamed");
    struct stat st {};
    ASSERT_EQ(::stat(fifo.c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";
}

TEST_F(FileIo, FolderIsRefusedAsAnOutput) {
    EXPECT_NE(error_of([&] { cumnist::write_file_atomically(dir.string(), "x", "metrics "); }).find("it is a folder"),
              std::string::npos);
    EXPECT_EQ(error_of([&] { cumnist::require_writable(dir.string(), "--metrics-out"); }),
              "--metrics-out: '" + dir.string() + "' is a folder, expected a file");
}

TEST_F(FileIo, InputsMustBeRegularFiles) {
    const std::string fifo = path("pipe");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    EXPECT_EQ(error_of([&] { cumnist::require_regular_input(fifo, "an IDX file"); }),
              "'" + fifo + "' is a FIFO (a named pipe), not a regular file; expected an IDX file");
    EXPECT_EQ(error_of([] { cumnist::require_regular_input("/dev/zero", "an IDX file"); }),
              "'/dev/zero' is a character device, not a regular file; expected an IDX file");
    EXPECT_EQ(error_of([&] { cumnist::require_regular_input(dir.string(), "an IDX file"); }),
              "'" + dir.string() + "' is a folder, expected an IDX file");
    EXPECT_NE(error_of([&] { cumnist::require_regular_input(path("missing"), "an IDX file"); })
                  .find("No such file or directory"),
              std::string::npos);
    // The readers refuse them at once (a FIFO without a writer would block an open forever).
    EXPECT_EQ(error_of([&] { cumnist::load_checkpoint(fifo); }),
              "'" + fifo + "' is a FIFO (a named pipe), not a regular file; expected a .safetensors checkpoint");
    EXPECT_EQ(error_of([] { cumnist::load_checkpoint("/dev/zero"); }),
              "'/dev/zero' is a character device, not a regular file; expected a .safetensors checkpoint");
    EXPECT_EQ(error_of([&] { cumnist::load_idx_pair(fifo, fifo); }),
              "'" + fifo + "' is a FIFO (a named pipe), not a regular file; expected an IDX file");
    EXPECT_EQ(error_of([] { cumnist::load_idx_pair("/dev/zero", "/dev/zero"); }),
              "'/dev/zero' is a character device, not a regular file; expected an IDX file");
}

// An output that is one of the inputs (the same file under any name) or another output is refused
// before anything runs; new files, devices and distinct files pass.
TEST_F(FileIo, OutputsMustNotBeInputsOrEachOther) {
    using cumnist::NamedPath;
    const std::string model = path("best.safetensors"), data = path("t10k-images-idx3-ubyte");
    cumnist::write_file_atomically(model, "model");
    cumnist::write_file_atomically(data, "data");
    fs::create_hard_link(model, path("hard.safetensors"));
    fs::create_symlink("best.safetensors", path("soft.safetensors"));
    const std::vector<NamedPath> inputs = {{"--model", model}, {"a data file (mnist)", data}};
    auto clash = [&](const std::vector<NamedPath>& outputs) {
        return error_of([&] { cumnist::require_distinct(outputs, inputs); });
    };
    EXPECT_EQ(clash({{"--json", model}}),
              "--json '" + model + "' is the file given as --model; an output must not overwrite an input");
    EXPECT_NE(clash({{"--json", path("hard.safetensors")}}).find("is the file given as --model"), std::string::npos);
    EXPECT_NE(clash({{"--json", path("soft.safetensors")}}).find("is the file given as --model"), std::string::npos);
    EXPECT_NE(clash({{"--json", dir.string() + "/./t10k-images-idx3-ubyte"}}).find("is the file given as a data file (mnist)"),
              std::string::npos);
    // Two outputs naming one file that does not exist yet.
    EXPECT_EQ(clash({{"--save", path("run/last.safetensors")}, {"--metrics-out", path("run/../run/last.safetensors")}}),
              "--save '" + path("run/last.safetensors") + "' and --metrics-out '" + path("run/../run/last.safetensors") +
                  "' are the same file");
    EXPECT_EQ(clash({{"--json", path("new.json")}, {"--misclassified", path("new.png")}, {"--out", "/dev/null"},
                     {"--json", ""}}),
              "");
}

}  // namespace
