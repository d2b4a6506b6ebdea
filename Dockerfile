# cumnist in a container: the build stage compiles with the CUDA backend for Turing to Blackwell
# (plus PTX) and runs the test suite; the runtime stage holds the binary and its shared libraries
# and runs as a non-root user.
#
#   docker build -t cumnist .
#   docker run --gpus all --rm -v "$HOME/.cache/cumnist:/data" cumnist train
#   docker run --gpus all --rm cumnist selftest

FROM nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04 AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
        build-essential cmake git ca-certificates pkg-config \
        libfmt-dev libgtest-dev libdnnl-dev libcli11-dev nlohmann-json3-dev zlib1g-dev libstb-dev \
        libonnx-dev libprotobuf-dev \
        python3 python3-numpy \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# No GPU is visible while an image builds: build for the whole architecture list, portable CPU code.
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCUMNIST_CUDA=ON -DCUMNIST_NATIVE=OFF \
        -DCMAKE_CUDA_ARCHITECTURES="75-real;80-real;86-real;89-real;90-real;100-real;120" \
    && cmake --build build -j "$(nproc)"
# The suite without the tests that need the real MNIST files (fetched at run time instead); the
# GPU tests report as skipped here and run with `cumnist selftest` on the GPU host.
RUN ctest --test-dir build --output-on-failure -j "$(nproc)" -E 'EndToEnd|python_'
# The Debian/Ubuntu packages that provide the binary's shared libraries, for the runtime stage.
RUN ldd build/cumnist | awk '/=> \//{print $3}' | xargs -r realpath | xargs -r dpkg -S 2>/dev/null \
        | cut -d: -f1 | sort -u > /runtime-packages.txt && cat /runtime-packages.txt

# The cuDNN runtime image: libcudnn.so.9 loads its engine libraries at run time, so the whole
# cuDNN runtime must be there, not only what ldd names.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS runtime
ENV DEBIAN_FRONTEND=noninteractive
COPY --from=build /runtime-packages.txt /tmp/
RUN apt-get update && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt
COPY --from=build /src/build/cumnist /usr/local/bin/cumnist
COPY --from=build /src/scripts /opt/cumnist/scripts
RUN useradd --create-home --uid 10001 cumnist && mkdir -p /data && chown cumnist /data
USER cumnist
ENV CUMNIST_DATA=/data
WORKDIR /home/cumnist
ENTRYPOINT ["cumnist"]
CMD ["--help"]
