/* Test-only CPU emulation of the CUDA runtime subset in cuda_runtime_emu.h
 * (see there for the semantics modelled). A stream is a queue of closures run
 * when something waits for it; a capture redirects the queue into a graph;
 * device and pinned allocations are kept in registries, so a copy knows
 * whether its host side is pageable and a device pointer that is not one is
 * refused. */
#include "cuda_emu.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

long emu_counters_races();

namespace {

const size_t EMU_HDR = 256;
const size_t EMU_DEFAULT_MEM = (size_t)4 << 30;

std::atomic<size_t> mem_total{EMU_DEFAULT_MEM}, mem_used{0};
std::atomic<int> devices{1};
std::atomic<int> sticky{0};
std::atomic<unsigned long long> seed_value{0};
std::atomic<bool> seed_set{false};
std::atomic<int> quiet{0};
thread_local cudaError_t last_err = cudaSuccess;

std::atomic<long> n_launches{0}, n_graph_launches{0}, n_captures_ok{0}, n_captures_failed{0},
    n_attribute_sets{0};

std::mutex fault_mu;
std::string fault_text;

/* ---- allocations ---- */
std::mutex reg_mu;
std::map<uintptr_t, size_t> dev_allocs, pinned_allocs; /* start -> bytes */

bool in_map(const std::map<uintptr_t, size_t> &m, const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}
bool is_dev(const void *p, size_t n) {
    std::lock_guard<std::mutex> g(reg_mu);
    return in_map(dev_allocs, p, n);
}
bool is_pinned(const void *p, size_t n) {
    std::lock_guard<std::mutex> g(reg_mu);
    return in_map(pinned_allocs, p, n);
}

/* ---- per-kernel attributes (the driver keeps them per function) ---- */
std::mutex attr_mu;
std::map<const void *, int> max_dyn_smem;

} // namespace

/* ---- streams, graphs, events ---- */
struct emu_graph {
    std::vector<std::function<void()>> ops;
};
struct emu_graph_exec {
    std::vector<std::function<void()>> ops;
};
struct emu_stream {
    std::mutex mu;      /* q, tickets, capture state */
    std::mutex exec_mu; /* held while queued work runs */
    std::deque<std::function<void()>> q;
    unsigned long long queued = 0, done = 0;
    bool capturing = false, invalidated = false;
    cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
    std::thread::id capture_thread;
    emu_graph *graph = nullptr;
};
struct emu_event {
    emu_stream *s = nullptr;
    unsigned long long ticket = 0;
    bool recorded = false;
    std::shared_ptr<std::chrono::steady_clock::time_point> when;
};

namespace {

std::mutex streams_mu;
std::set<emu_stream *> streams;

cudaError_t sticky_err() {
    return (cudaError_t)sticky.load();
}

cudaError_t set_last(cudaError_t e) {
    if (e && !last_err) last_err = e;
    return e;
}

/* Captures that forbid a potentially unsafe call from this thread (Global:
 * any thread's; ThreadLocal: this thread's) are invalidated. */
bool capture_forbids(const char *what) {
    (void)what;
    bool hit = false;
    std::lock_guard<std::mutex> g(streams_mu);
    for (emu_stream *s : streams) {
        std::lock_guard<std::mutex> sg(s->mu);
        if (!s->capturing || s->mode == cudaStreamCaptureModeRelaxed) continue;
        if (s->mode == cudaStreamCaptureModeGlobal ||
            s->capture_thread == std::this_thread::get_id()) {
            s->invalidated = true;
            hit = true;
        }
    }
    return hit;
}

/* Runs s's queued work up to ticket `upto` (all when ~0). */
void flush(emu_stream *s, unsigned long long upto = ~0ULL) {
    std::lock_guard<std::mutex> ex(s->exec_mu);
    for (;;) {
        std::function<void()> op;
        {
            std::lock_guard<std::mutex> g(s->mu);
            if (s->q.empty() || s->done >= upto) return;
            op = std::move(s->q.front());
            s->q.pop_front();
        }
        if (!sticky.load()) op(); /* after a fault the device runs nothing more */
        std::lock_guard<std::mutex> g(s->mu);
        s->done++;
    }
}

void flush_all() {
    std::vector<emu_stream *> all;
    {
        std::lock_guard<std::mutex> g(streams_mu);
        all.assign(streams.begin(), streams.end());
    }
    for (emu_stream *s : all)
        flush(s);
}

bool live_stream(emu_stream *s) {
    std::lock_guard<std::mutex> g(streams_mu);
    return streams.count(s) != 0;
}

} // namespace

cudaError_t emu_enqueue(cudaStream_t s, const char *what, std::function<void()> op) {
    if (sticky.load()) return sticky_err();
    if (!s) { /* the legacy stream: runs now; illegal while this thread captures */
        if (capture_forbids(what)) return cudaErrorStreamCaptureImplicit;
        op();
        return sticky_err();
    }
    if (!live_stream(s)) return cudaErrorInvalidResourceHandle;
    std::lock_guard<std::mutex> g(s->mu);
    if (s->capturing) {
        if (!s->invalidated) s->graph->ops.push_back(std::move(op));
        return cudaSuccess;
    }
    s->q.push_back(std::move(op));
    s->queued++;
    return cudaSuccess;
}

cudaError_t emu_check_launch(const void *func, dim3 grid, dim3 block, size_t dyn_smem) {
    long threads = (long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || !block.x || !block.y || !block.z || threads > 1024 ||
        block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x > 0x7fffffffu ||
        grid.y > 65535 || grid.z > 65535)
        return cudaErrorInvalidConfiguration;
    int limit = EMU_SMEM_DEFAULT;
    if (func) {
        std::lock_guard<std::mutex> g(attr_mu);
        auto it = max_dyn_smem.find(func);
        if (it != max_dyn_smem.end()) limit = it->second;
    }
    if (dyn_smem > (size_t)limit) return cudaErrorInvalidValue;
    return cudaSuccess;
}

void emu_launch_kernel(const void *func, const char *name, dim3 grid, dim3 block, size_t dyn_smem,
                       cudaStream_t s, std::function<void()> body) {
    cudaError_t e = emu_check_launch(func, grid, block, dyn_smem);
    if (e) {
        if (!quiet)
            fprintf(stderr,
                    "emu: invalid launch of %s: grid (%u,%u,%u), block (%u,%u,%u), %zu bytes of "
                    "dynamic shared memory (%s)\n",
                    name, grid.x, grid.y, grid.z, block.x, block.y, block.z, dyn_smem,
                    cudaGetErrorString(e));
        set_last(e);
        return;
    }
    auto run = [name, grid, block, dyn_smem, body]() {
        n_launches++;
        emu_run_grid(name, grid, block, dyn_smem, body);
    };
    set_last(emu_enqueue(s, name, std::move(run)));
}

extern "C" {

void emu_set_device_memory(size_t total_bytes) {
    mem_total = total_bytes ? total_bytes : EMU_DEFAULT_MEM;
}
void emu_set_device_count(int n) {
    devices = n;
}
size_t emu_device_bytes_in_use(void) {
    return mem_used.load();
}
void emu_set_sticky_error(cudaError_t e, const char *what) {
    int expected = 0;
    if (sticky.compare_exchange_strong(expected, (int)e)) {
        std::lock_guard<std::mutex> g(fault_mu);
        fault_text = what ? what : "";
    }
}
void emu_set_quiet(int q) {
    quiet = q;
}
int emu_quiet(void) {
    return quiet;
}
void emu_reset_device(void) {
    std::vector<emu_stream *> all;
    {
        std::lock_guard<std::mutex> g(streams_mu);
        all.assign(streams.begin(), streams.end());
    }
    for (emu_stream *s : all) {
        std::lock_guard<std::mutex> ex(s->exec_mu);
        std::lock_guard<std::mutex> g(s->mu);
        s->done += s->q.size();
        s->q.clear();
    }
    sticky = 0;
    last_err = cudaSuccess;
    std::lock_guard<std::mutex> g(fault_mu);
    fault_text.clear();
}
const char *emu_last_fault(void) {
    static thread_local std::string copy;
    std::lock_guard<std::mutex> g(fault_mu);
    copy = fault_text;
    return copy.c_str();
}
void emu_get_counters(emu_counters *c) {
    c->launches = n_launches;
    c->graph_launches = n_graph_launches;
    c->captures_ok = n_captures_ok;
    c->captures_failed = n_captures_failed;
    c->attribute_sets = n_attribute_sets;
    c->races = emu_counters_races();
}
void emu_set_seed(unsigned long long seed) {
    seed_value = seed;
    seed_set = true;
}
unsigned long long emu_seed(void) {
    if (!seed_set.load()) {
        const char *e = getenv("EASEL_EMU_SEED");
        seed_value = e ? strtoull(e, nullptr, 0) : 0x5eedc0deULL;
        seed_set = true;
    }
    return seed_value;
}
int emu_racecheck_available(void) {
#ifdef EASEL_EMU_RACECHECK
    return 1;
#else
    return 0;
#endif
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    case cudaErrorLaunchFailure:
        return "unspecified launch failure";
    case cudaErrorIllegalAddress:
        return "an illegal memory access was encountered";
    case cudaErrorMisalignedAddress:
        return "misaligned address";
    case cudaErrorLaunchOutOfResources:
        return "too many resources requested for launch";
    case cudaErrorInsufficientDriver:
        return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice:
        return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
        return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
        return "invalid resource handle";
    case cudaErrorNotReady:
        return "device not ready";
    case cudaErrorNotSupported:
        return "operation not supported";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit:
        return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorStreamCaptureWrongThread:
        return "attempt to terminate a thread-local capture sequence from another thread";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void) {
    if (sticky.load()) return sticky_err();
    cudaError_t e = last_err;
    last_err = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) {
    return sticky.load() ? sticky_err() : last_err;
}

cudaError_t cudaGetDeviceCount(int *count) {
    if (devices <= 0) return cudaErrorNoDevice; /* like the real one: count untouched */
    *count = devices;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int dev) {
    return dev >= 0 && dev < devices ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t cudaGetDevice(int *dev) {
    *dev = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev) {
    if (dev < 0 || dev >= devices) return cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "easel CPU emulator");
    p->totalGlobalMem = mem_total;
    p->multiProcessorCount = 1;
    p->major = 9;
    p->minor = 0;
    p->sharedMemPerBlock = EMU_SMEM_DEFAULT;
    p->sharedMemPerBlockOptin = EMU_SMEM_OPTIN;
    p->l2CacheSize = 1 << 20;
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    size_t used = mem_used, total = mem_total;
    *free_bytes = used < total ? total - used : 0;
    *total_bytes = total;
    return sticky_err();
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = NULL;
    if (sticky.load()) return sticky_err();
    if (capture_forbids("cudaMalloc")) return cudaErrorStreamCaptureUnsupported;
    size_t used = mem_used += bytes;
    void *m = NULL;
    if (used > mem_total || posix_memalign(&m, EMU_HDR, bytes + EMU_HDR)) {
        mem_used -= bytes;
        return cudaErrorMemoryAllocation;
    }
    memcpy(m, &bytes, sizeof bytes);
    *p = (char *)m + EMU_HDR;
    std::lock_guard<std::mutex> g(reg_mu);
    dev_allocs[(uintptr_t)*p] = bytes ? bytes : 1;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    if (capture_forbids("cudaFree")) return cudaErrorStreamCaptureUnsupported;
    flush_all(); /* cudaFree waits for the device */
    {
        std::lock_guard<std::mutex> g(reg_mu);
        if (!dev_allocs.erase((uintptr_t)p)) return cudaErrorInvalidValue;
    }
    char *m = (char *)p - EMU_HDR;
    size_t bytes;
    memcpy(&bytes, m, sizeof bytes);
    mem_used -= bytes;
    free(m);
    return sticky_err();
}
cudaError_t cudaMallocHost(void **p, size_t bytes) {
    *p = NULL;
    if (capture_forbids("cudaMallocHost")) return cudaErrorStreamCaptureUnsupported;
    *p = malloc(bytes ? bytes : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    std::lock_guard<std::mutex> g(reg_mu);
    pinned_allocs[(uintptr_t)*p] = bytes ? bytes : 1;
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *p) {
    if (!p) return cudaSuccess;
    if (capture_forbids("cudaFreeHost")) return cudaErrorStreamCaptureUnsupported;
    flush_all();
    {
        std::lock_guard<std::mutex> g(reg_mu);
        if (!pinned_allocs.erase((uintptr_t)p)) return cudaErrorInvalidValue;
    }
    free(p);
    return cudaSuccess;
}

/* Resolves cudaMemcpyDefault and checks that each side is what kind says. */
static cudaError_t memcpy_sides(void *dst, const void *src, size_t n, cudaMemcpyKind *k) {
    bool dd = is_dev(dst, n), sd = is_dev(src, n);
    if (*k == cudaMemcpyDefault)
        *k = dd ? (sd ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                : (sd ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    bool want_dd = *k == cudaMemcpyHostToDevice || *k == cudaMemcpyDeviceToDevice;
    bool want_sd = *k == cudaMemcpyDeviceToHost || *k == cudaMemcpyDeviceToDevice;
    if (dd != want_dd || sd != want_sd) {
        if (!quiet)
            fprintf(stderr,
                    "emu: cudaMemcpy kind %d does not match the pointers (dst %s, src %s)\n",
                    (int)*k, dd ? "device" : "host", sd ? "device" : "host");
        return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind k) {
    if (sticky.load()) return sticky_err();
    if (!n) return cudaSuccess;
    cudaError_t e = memcpy_sides(dst, src, n, &k);
    if (e) return e;
    /* the legacy stream: ordered with blocking streams only — easel's streams
     * are non-blocking, so this does not wait for them */
    if (capture_forbids("cudaMemcpy")) return cudaErrorStreamCaptureImplicit;
    memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k,
                            cudaStream_t s) {
    if (sticky.load()) return sticky_err();
    if (!n) return cudaSuccess;
    cudaError_t e = memcpy_sides(dst, src, n, &k);
    if (e) return e;
    bool capturing = false;
    if (s) {
        std::lock_guard<std::mutex> g(s->mu);
        capturing = s->capturing;
    }
    if (k == cudaMemcpyHostToDevice && !is_pinned(src, n)) {
        if (capturing) {
            std::lock_guard<std::mutex> g(s->mu);
            s->invalidated = true;
            return cudaErrorStreamCaptureUnsupported; /* a pageable copy cannot be captured */
        }
        /* staged now: the caller may reuse src when this returns */
        auto staged = std::make_shared<std::vector<char>>((const char *)src, (const char *)src + n);
        return emu_enqueue(s, "memcpy", [dst, staged, n]() { memcpy(dst, staged->data(), n); });
    }
    if ((k == cudaMemcpyDeviceToHost && !is_pinned(dst, n)) || k == cudaMemcpyHostToHost) {
        if (capturing) {
            std::lock_guard<std::mutex> g(s->mu);
            s->invalidated = true;
            return cudaErrorStreamCaptureUnsupported;
        }
        if (s) flush(s); /* to pageable memory: returns once the copy is done */
        if (sticky.load()) return sticky_err();
        memmove(dst, src, n);
        return cudaSuccess;
    }
    return emu_enqueue(s, "memcpy", [dst, src, n]() { memmove(dst, src, n); });
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) {
    if (sticky.load()) return sticky_err();
    if (!n) return cudaSuccess;
    if (!is_dev(p, n)) return cudaErrorInvalidValue;
    return emu_enqueue(s, "memset", [p, v, n]() { memset(p, v, n); });
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    (void)flags;
    *s = new (std::nothrow) emu_stream();
    if (!*s) return cudaErrorMemoryAllocation;
    std::lock_guard<std::mutex> g(streams_mu);
    streams.insert(*s);
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s || !live_stream(s)) return cudaErrorInvalidResourceHandle;
    flush(s);
    {
        std::lock_guard<std::mutex> g(streams_mu);
        streams.erase(s);
    }
    delete s->graph;
    delete s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (s) {
        std::lock_guard<std::mutex> g(s->mu);
        if (s->capturing) {
            s->invalidated = true;
            return cudaErrorStreamCaptureUnsupported;
        }
    } else if (capture_forbids("cudaStreamSynchronize")) {
        return cudaErrorStreamCaptureImplicit;
    }
    if (s) flush(s);
    return sticky_err();
}
cudaError_t cudaStreamQuery(cudaStream_t s) {
    return cudaStreamSynchronize(s); /* work "finishes" when polled */
}
cudaError_t cudaDeviceSynchronize(void) {
    if (capture_forbids("cudaDeviceSynchronize")) return cudaErrorStreamCaptureUnsupported;
    flush_all();
    return sticky_err();
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
    (void)flags;
    *e = new (std::nothrow) emu_event();
    return *e ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (sticky.load()) return sticky_err();
    if (!s) return cudaErrorInvalidResourceHandle; /* easel records on its own streams */
    auto when = std::make_shared<std::chrono::steady_clock::time_point>();
    {
        std::lock_guard<std::mutex> g(s->mu);
        if (s->capturing) return cudaErrorStreamCaptureUnsupported; /* not modelled */
    }
    cudaError_t r = emu_enqueue(s, "event", [when]() { *when = std::chrono::steady_clock::now(); });
    if (r) return r;
    std::lock_guard<std::mutex> g(s->mu);
    e->s = s;
    e->ticket = s->queued;
    e->recorded = true;
    e->when = when;
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (!e->recorded) return cudaSuccess;
    if (!live_stream(e->s)) return sticky_err();
    {
        std::lock_guard<std::mutex> g(e->s->mu);
        if (e->s->capturing) {
            e->s->invalidated = true;
            return cudaErrorStreamCaptureUnsupported;
        }
    }
    flush(e->s, e->ticket);
    return sticky_err();
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
    return cudaEventSynchronize(e);
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a->recorded || !b->recorded) return cudaErrorInvalidResourceHandle;
    cudaEventSynchronize(a);
    cudaEventSynchronize(b);
    *ms = std::chrono::duration<float, std::milli>(*b->when - *a->when).count();
    return sticky_err();
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    if (sticky.load()) return sticky_err();
    if (!s) return cudaErrorStreamCaptureUnsupported; /* the legacy stream cannot be captured */
    std::lock_guard<std::mutex> g(s->mu);
    if (s->capturing) return cudaErrorInvalidValue;
    s->capturing = true;
    s->invalidated = false;
    s->mode = mode;
    s->capture_thread = std::this_thread::get_id();
    s->graph = new emu_graph();
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    *g = NULL;
    if (!s) return cudaErrorInvalidValue;
    std::lock_guard<std::mutex> lk(s->mu);
    if (!s->capturing) return cudaErrorInvalidValue;
    if (s->mode != cudaStreamCaptureModeRelaxed && s->capture_thread != std::this_thread::get_id())
        return cudaErrorStreamCaptureWrongThread;
    s->capturing = false;
    emu_graph *gr = s->graph;
    s->graph = nullptr;
    if (s->invalidated || sticky.load()) {
        delete gr;
        n_captures_failed++;
        return sticky.load() ? sticky_err() : cudaErrorStreamCaptureInvalidated;
    }
    *g = gr;
    n_captures_ok++;
    return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *status) {
    *status = cudaStreamCaptureStatusNone;
    if (!s) return cudaSuccess;
    std::lock_guard<std::mutex> g(s->mu);
    if (s->capturing)
        *status =
            s->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags) {
    (void)flags;
    *e = NULL;
    if (!g) return cudaErrorInvalidValue;
    if (sticky.load()) return sticky_err();
    *e = new (std::nothrow) emu_graph_exec();
    if (!*e) return cudaErrorMemoryAllocation;
    (*e)->ops = g->ops;
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    if (!e) return cudaErrorInvalidValue;
    if (sticky.load()) return sticky_err();
    if (s) {
        std::lock_guard<std::mutex> g(s->mu);
        if (s->capturing) return cudaErrorNotSupported; /* child graphs: not modelled */
    }
    emu_graph_exec *ex = e;
    auto ops = std::make_shared<std::vector<std::function<void()>>>(ex->ops);
    return emu_enqueue(s, "graph", [ops]() {
        n_graph_launches++;
        for (auto &op : *ops)
            if (!sticky.load()) op();
    });
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    delete e;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}

cudaError_t emu_func_set_attribute(const void *func, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > EMU_SMEM_OPTIN)
        return cudaErrorInvalidValue;
    {
        std::lock_guard<std::mutex> g(attr_mu);
        max_dyn_smem[func] = value;
    }
    n_attribute_sets++;
    /* The attribute is per kernel and process-wide, not per stream: widen the
     * window in which another thread's launch can see this value, so that a
     * race between workers setting different values shows in a test. */
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    return cudaSuccess;
}

} /* extern "C" */
