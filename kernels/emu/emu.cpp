/* Test-only fiber scheduler behind cuda_emu.h: runs a grid block by block;
 * within a block every CUDA thread is a ucontext fiber that runs until it
 * reaches a barrier (block or warp) or returns. When every live thread of a
 * warp waits at a warp barrier they are released; when every live thread of
 * the block waits at __syncthreads they all are. If nothing can be released
 * the launch is reported as failed (a barrier not reached by all). A fiber is
 * entered the first time with swapcontext and switched with _setjmp/_longjmp
 * after that (swapcontext makes two signal-mask syscalls per switch, which
 * made the emulator several times slower). Annotated for AddressSanitizer so
 * the test runs in the sanitizer build too. */
#undef _FORTIFY_SOURCE /* its longjmp check rejects jumps between stacks */
#include "cuda_emu.h"

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <ucontext.h>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

__thread emu_thread_state *emu_cur;
__thread emu_block_state emu_blk;

namespace {

const size_t STACK_BYTES = 256 * 1024;
enum { F_READY, F_WAIT_BLOCK, F_WAIT_WARP, F_DONE };

struct fiber {
    emu_thread_state st;
    ucontext_t ctx; /* first entry only */
    jmp_buf jb;     /* where the fiber continues */
    bool started;
    int state;
    char *stack;
    void *fake_stack;
};

struct sched {
    ucontext_t main_ctx;
    jmp_buf main_jb;
    std::vector<fiber> f;
    int n;
    const std::function<void()> *body;
    std::vector<uint64_t> slots; /* 32 per warp */
    unsigned char *smem;         /* 128-byte aligned, smem_bytes long */
    size_t smem_bytes;
    fiber *cur;
    bool failed;
    void *main_fake;
    const void *main_bottom;
    size_t main_size;
};

thread_local sched *cur_sched;

/* Fiber stacks, kept per host thread across launches (grow-only; a plain
 * __thread pointer, so they stay reachable and leak checkers stay quiet). */
__thread char **stack_pool;
__thread int stack_pool_n;

bool grow_stacks(int n) {
    if (n <= stack_pool_n) return true;
    char **p = static_cast<char **>(realloc(stack_pool, sizeof(char *) * (size_t)n));
    if (!p) return false;
    stack_pool = p;
    for (; stack_pool_n < n; stack_pool_n++) {
        p[stack_pool_n] = static_cast<char *>(aligned_alloc(64, STACK_BYTES));
        if (!p[stack_pool_n]) return false;
    }
    return true;
}

__attribute__((noinline)) void switch_to_fiber(sched *s, fiber *f) {
    s->cur = f;
    emu_cur = &f->st;
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&s->main_fake, f->stack, STACK_BYTES);
#endif
    if (!_setjmp(s->main_jb)) {
        if (f->started) _longjmp(f->jb, 1);
        f->started = true;
        swapcontext(&s->main_ctx, &f->ctx);
    }
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(s->main_fake, nullptr, nullptr);
#endif
}

__attribute__((noinline)) void switch_to_main(sched *s, fiber *f, bool dying) {
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : &f->fake_stack, s->main_bottom, s->main_size);
#else
    (void)dying;
#endif
    if (dying) _longjmp(s->main_jb, 1);
    if (!_setjmp(f->jb)) _longjmp(s->main_jb, 1);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
}

void trampoline() {
    sched *s = cur_sched;
    fiber *f = s->cur;
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &s->main_bottom, &s->main_size);
#endif
    (*s->body)();
    f->state = F_DONE;
    switch_to_main(s, f, true);
}

void wait_at(int state) {
    sched *s = cur_sched;
    fiber *f = s->cur;
    f->state = state;
    switch_to_main(s, f, false);
}

/* Releases the threads of a warp whose live threads all wait at a warp barrier. */
bool release_warps(sched *s) {
    bool any = false;
    for (int w0 = 0; w0 < s->n; w0 += 32) {
        int end = w0 + 32 < s->n ? w0 + 32 : s->n, waiting = 0, live = 0;
        for (int i = w0; i < end; i++) {
            if (s->f[i].state == F_DONE) continue;
            live++;
            waiting += s->f[i].state == F_WAIT_WARP;
        }
        if (live && waiting == live) {
            for (int i = w0; i < end; i++)
                if (s->f[i].state == F_WAIT_WARP) s->f[i].state = F_READY;
            any = true;
        }
    }
    return any;
}

/* 1: released a block barrier, 0: all done, -1: deadlock. */
int release_block(sched *s) {
    int live = 0, waiting = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->f[i].state == F_DONE) continue;
        live++;
        waiting += s->f[i].state == F_WAIT_BLOCK;
    }
    if (!live) return 0;
    if (waiting != live) return -1;
    for (int i = 0; i < s->n; i++)
        if (s->f[i].state == F_WAIT_BLOCK) s->f[i].state = F_READY;
    return 1;
}

/* getcontext returns twice: kept out of the loops that call it. */
__attribute__((noinline)) void init_fiber(fiber *f) {
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack;
    f->ctx.uc_stack.ss_size = STACK_BYTES;
    f->ctx.uc_link = nullptr;
    makecontext(&f->ctx, trampoline, 0);
    f->state = F_READY;
    f->started = false;
    f->fake_stack = nullptr;
}

void run_block(sched *s) {
    for (int i = 0; i < s->n; i++)
        init_fiber(&s->f[i]);
    std::memset(s->smem, 0xff, s->smem_bytes);
    for (;;) {
        for (int i = 0; i < s->n; i++)
            if (s->f[i].state == F_READY) switch_to_fiber(s, &s->f[i]);
        if (release_warps(s)) continue;
        int r = release_block(s);
        if (r == 0) return;
        if (r < 0) {
            emu_fault("barrier not reached by every thread of the block (deadlock)");
            return; /* the stuck fibers are abandoned; their stacks are reused */
        }
    }
}

} // namespace

void emu_fault(const char *what) {
    sched *s = cur_sched;
    if (s && !s->failed) fprintf(stderr, "emu: launch failed: %s\n", what);
    if (s) s->failed = true;
    emu_set_launch_error(cudaErrorLaunchFailure);
}

void emu_launch(dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()> &body) {
    long nthreads = (long)block.x * block.y * block.z;
    if (nthreads < 1 || nthreads > 1024 || !grid.x || !grid.y || !grid.z || dyn_smem > 227 * 1024) {
        fprintf(stderr, "emu: invalid launch configuration\n");
        emu_set_launch_error(cudaErrorInvalidValue);
        return;
    }
    sched s;
    s.n = (int)nthreads;
    s.body = &body;
    s.f.resize(s.n);
    s.slots.assign((size_t)((s.n + 31) / 32) * 32, 0);
    s.smem_bytes = (dyn_smem + 127) / 128 * 128 + 128;
    s.smem = static_cast<unsigned char *>(aligned_alloc(128, s.smem_bytes));
    if (!s.smem) {
        emu_set_launch_error(cudaErrorMemoryAllocation);
        return;
    }
    s.failed = false;
    s.main_fake = nullptr;
    s.main_bottom = nullptr;
    s.main_size = 0;
    if (!grow_stacks(s.n)) {
        free(s.smem);
        emu_set_launch_error(cudaErrorMemoryAllocation);
        return;
    }
    for (int i = 0; i < s.n; i++) {
        fiber *f = &s.f[i];
        f->stack = stack_pool[i];
        f->st.tid = {(unsigned)(i % block.x), (unsigned)(i / block.x % block.y),
                     (unsigned)(i / (block.x * block.y))};
        f->st.linear = i;
    }
    sched *prev = cur_sched;
    emu_thread_state *prev_cur = emu_cur;
    cur_sched = &s;
    emu_blk.dim = {block.x, block.y, block.z};
    emu_blk.grid = {grid.x, grid.y, grid.z};
    for (unsigned z = 0; z < grid.z && !s.failed; z++)
        for (unsigned y = 0; y < grid.y && !s.failed; y++)
            for (unsigned x = 0; x < grid.x && !s.failed; x++) {
                emu_blk.idx = {x, y, z};
                run_block(&s);
            }
    cur_sched = prev;
    emu_cur = prev_cur;
    free(s.smem);
}

void *emu_dyn_smem() {
    sched *s = cur_sched;
    return s ? s->smem : nullptr;
}

void emu_barrier_block() {
    wait_at(F_WAIT_BLOCK);
}
void emu_barrier_warp() {
    wait_at(F_WAIT_WARP);
}

uint64_t emu_warp_exchange(uint64_t v, int src_lane) {
    sched *s = cur_sched;
    int me = emu_cur->linear, base = me & ~31;
    s->slots[me] = v;
    emu_barrier_warp();
    int src = base + src_lane;
    uint64_t r = src < s->n && s->f[src].state != F_DONE ? s->slots[src] : v;
    emu_barrier_warp();
    return r;
}

unsigned emu_warp_ballot(int pred) {
    sched *s = cur_sched;
    int me = emu_cur->linear, base = me & ~31;
    s->slots[me] = pred != 0;
    emu_barrier_warp();
    unsigned b = 0;
    for (int i = base; i < base + 32 && i < s->n; i++)
        if (s->f[i].state != F_DONE && s->slots[i]) b |= 1u << (i - base);
    emu_barrier_warp();
    return b;
}
