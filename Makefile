SHELL := /bin/bash
# easel's entry points. A fresh Debian 12 machine needs only `make run` or `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
HOST ?= 127.0.0.1
PORT ?= 8080
DATA ?= $(CURDIR)/data
MODEL ?=

.PHONY: all deps test-deps build test test-c run bench gpu-check gpu-carry sanitize cuda-build fuzz fuzz-long clean format

all: build

deps:
	@tools/deps.sh

# what the tests drive besides the build: a browser, PHP with php-curl, PostgreSQL, ...
test-deps:
	@EASEL_DEPS_TEST=1 tools/deps.sh

$(BUILD)/CMakeCache.txt:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null

build: deps $(BUILD)/CMakeCache.txt
	@set -o pipefail; cmake --build $(BUILD) -j $(JOBS) 2>&1 | { grep -vE '^\[ *[0-9]+%\] (Building|Linking|Built)|^g?make\[[0-9]+\]: (Entering|Leaving)' || true; }

test: test-deps build
	@# a fault build that is there is rebuilt first: a stale one would test old code
	@if [ -f build-faults/CMakeCache.txt ]; then $(MAKE) --no-print-directory faults-build; fi
	@tests/run_tests.sh $(BUILD)

# C tests only (no Python), e.g. for the sanitizer build
test-c: build
	@tests/run_tests.sh $(BUILD) --c-only

run: build
	@tools/run.sh $(BUILD)/easel "$(DATA)" "$(HOST)" "$(PORT)" "$(MODEL)"

bench: build
	@bench/run_bench.sh $(BUILD)

# On a lent GPU machine (tools/gpu_check/README.md): the one-shot check, ~10 min.
gpu-check:
	@tools/gpu_check.sh

# Here, before a GPU session: the CUDA-enabled binaries + their libraries and the
# CPU reference image, packed into .gpu-carry/ for the device tool's carry.
gpu-carry:
	@tools/gpu_check/carry.sh

# The sanitizer configuration of the C tests (ASan + UBSan + LSan).
sanitize:
	@$(MAKE) --no-print-directory test-c BUILD=build-asan CMAKE_FLAGS="-DEASEL_SANITIZE=address,undefined -DEASEL_CUDA=OFF"

# The CUDA-on build: compile and link only (no GPU needed).
cuda-build: deps
	@cmake -S . -B build-cuda -DEASEL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
	@set -o pipefail; cmake --build build-cuda -j $(JOBS) 2>&1 | { grep -vE '^\[ *[0-9]+%\] (Building|Linking|Built)|^g?make\[[0-9]+\]: (Entering|Leaving)' || true; }

fuzz:
	@tools/fuzz.sh $(or $(FUZZ_SECONDS),60)

# The long campaign: every target at once, each stopped after FUZZ_CPU_SECONDS
# of CPU time (default one hour each); summary in out/fuzz-long/summary.txt.
fuzz-long:
	@tools/fuzz_long.sh $(or $(FUZZ_CPU_SECONDS),3600)

clean:
	rm -rf build build-asan build-cuda build-fuzz

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu' '*.cuh')

# The fault-injection build (-DEASEL_FAULTS=ON, engine/fault.h) that tests/test_fault.c
# and the chaos fault tests use (tests/run_tests.sh finds it in build-faults/).
.PHONY: faults-build chaos
faults-build: deps
	@cmake -S . -B build-faults -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEASEL_FAULTS=ON -DEASEL_CUDA=OFF >/dev/null
	@set -o pipefail; cmake --build build-faults -j $(JOBS) 2>&1 | { grep -vE '^\[ *[0-9]+%\] (Building|Linking|Built)|^g?make\[[0-9]+\]: (Entering|Leaving)' || true; }

# The long chaos runs (make test runs the short ones): 100 kill -9s, 20,000 hostile
# requests, 2,000 keep-alive pollers x 60 s, the fault tests. Figures: bench/results/.
chaos: build faults-build
	@tests/chaos/run_chaos.sh $(BUILD) build-faults
