/* Test-only fiber scheduler behind cuda_emu.h. A grid's blocks run one at a
 * time in a seeded random order; within a block every CUDA thread is a
 * fiber. The scheduler repeatedly picks a random ready fiber and
 * runs it until it waits at a barrier, returns, or — when the kernels were
 * compiled with access hooks (EASEL_EMU_RACECHECK) — is switched out at a
 * shared-memory access (with probability 1/8, from the launch's seed).
 * Warp barriers are released when every lane named in their mask waits at
 * the same kind of barrier with the same mask; __syncthreads when every live
 * thread waits at it; if nothing can be released the launch fails
 * (deadlock). Fibers live on a per-host-thread pool of stacks, each with a
 * trampoline parked on it (created once with swapcontext); a CUDA thread is
 * started and switched with _setjmp/_longjmp only (swapcontext makes two
 * signal-mask syscalls per switch, which made the emulator several times
 * slower). Annotated for AddressSanitizer so the test runs in the sanitizer
 * build too.
 *
 * Access hooks: the kernel sources are compiled with -fsanitize=thread but
 * linked without the ThreadSanitizer runtime; the compiler's calls to
 * __tsan_readN/__tsan_writeN land here. An access outside the running
 * block's shared memory returns at once; one inside it goes through the race
 * detector: per 2-byte granule the last write and up to two reads since,
 * each with its thread, the block's barrier phase and the thread's warp-level
 * clock. Two accesses by different threads, one a write, race unless a
 * __syncthreads separates them (the phase moved) or both are lanes of one
 * warp and a __syncwarp naming both separates them (vector clocks over the 32
 * lanes). Warp-collective accesses (WMMA) count as the warp's and are
 * ordered with a lane's accesses by a full-warp __syncwarp. */
#undef _FORTIFY_SOURCE /* its longjmp check rejects jumps between stacks */
#include "cuda_emu.h"

#include <algorithm>
#include <atomic>
#include <csetjmp>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <string>
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

static const float *make_half_table() {
    static float t[65536];
    for (unsigned i = 0; i < 65536; i++)
        t[i] = f16_to_f32((uint16_t)i);
    return t;
}
const float *const emu_half_table = make_half_table();

void emu_counters_add_race();

namespace {

const size_t STACK_BYTES = 256 * 1024;
const size_t SMEM_BYTES = EMU_SMEM_OPTIN + 4096; /* dynamic + static, the hardware's cap */
const int YIELD_ONE_IN = 8;

enum { F_READY, F_WAIT_BLOCK, F_WAIT_WARP, F_DONE };
/* Kinds of warp barrier: lanes meet only with lanes at the same kind and
 * mask. An exchange (shuffle, vote, gather) is one barrier: its results are
 * computed when it releases, before any lane goes on. */
enum { WB_SYNC, WB_CONVERGE, WB_EXCH, WB_GATHER };
enum { X_SHUFFLE, X_BALLOT };

const int32_t NO_TID = INT32_MIN;

/* One access for the race detector. tid < 0: the warp -tid-1 collectively. */
struct access_rec {
    int32_t tid;
    uint32_t phase; /* the block's __syncthreads count at the access */
    uint32_t clock; /* the thread's own vector-clock entry (lanes of one warp) */
    uint32_t fs;    /* its warp's full-warp __syncwarp count */
};
struct granule {
    uint32_t gen; /* block serial: older means empty */
    uint32_t multi_phase;
    uint8_t multi; /* more than two unordered readers seen */
    access_rec w, r1, r2;
};

/* A fiber stack of the host thread's pool with a trampoline parked on it:
 * created once (the only swapcontext), then started for each block with
 * _longjmp to `top` and back at the end, so starting a CUDA thread costs a
 * jump, not the two signal-mask syscalls of getcontext/swapcontext. */
struct slot {
    char *stack;
    jmp_buf top; /* the trampoline's loop head: jump here to run the body */
    void *fake_stack;
};

struct async_copy {
    void *dst;
    const void *src;
    int bytes, n;
    long group;
};

struct fiber {
    emu_thread_state st;
    std::vector<async_copy> copies; /* cp.async not yet landed */
    long groups;                    /* cp.async groups committed */
    jmp_buf jb;                     /* where the fiber continues after a switch */
    bool started;
    int state;
    int wb_kind;
    unsigned wb_mask; /* warp barrier being waited at */
    int collective;   /* inside a warp-collective operation */
    slot *sl;
    /* a pending exchange, completed by the barrier's release */
    int xop; /* X_SHUFFLE, X_BALLOT, X_GATHER */
    int xsrc;
    uint64_t xval, xres;
    void *gdst;
    size_t gbytes;
};

struct static_var {
    const void *key;
    size_t off, bytes;
    const char *name;
};

struct sched {
    jmp_buf main_jb;
    std::vector<fiber> f;
    std::vector<int> ready;            /* indices of F_READY fibers */
    std::vector<uint32_t> live, wwait; /* per warp: lanes not done; lanes at a warp barrier */
    int n, n_live, n_block_wait;
    const std::function<void()> *body;
    const char *kernel;
    std::vector<unsigned char> gather; /* 32 x 64 bytes per warp: emu_warp_gather */
    unsigned char *smem;               /* 128-byte aligned, SMEM_BYTES */
    size_t dyn_bytes, static_used;
    std::vector<static_var> statics;
    fiber *cur;
    bool failed;
    void *main_fake;
    uint64_t rng;
    /* race detector */
    bool racecheck;
    uint32_t gen, phase;
    std::vector<granule> shadow;      /* one per 2 bytes of smem in use */
    std::vector<uint32_t> vc;         /* n x 32: lanes' vector clocks within the warp */
    std::vector<uint32_t> full_syncs; /* per warp */
};

thread_local sched *cur_sched;
/* The running block's shared memory, for the hooks' quick range test. */
__thread uintptr_t smem_lo, smem_hi;

/* The host thread's fiber slots, kept across launches (grow-only), freed
 * when the thread ends (workers run kernels on their own threads). */
__thread slot **slot_pool;
__thread int slot_pool_n;
/* Where a fiber goes back to: the scheduler's (or the slot creator's) jmp_buf. */
__thread jmp_buf *main_jb;
__thread slot *creating;
#ifdef EMU_ASAN
__thread const void *main_bottom;
__thread size_t main_size;
#endif

struct slot_pool_owner {
    ~slot_pool_owner() {
        for (int i = 0; i < slot_pool_n; i++) {
            free(slot_pool[i]->stack);
            free(slot_pool[i]);
        }
        free(slot_pool);
        slot_pool = nullptr;
        slot_pool_n = 0;
    }
};

void slot_entry();

/* getcontext returns twice: kept out of the loops that call it. */
__attribute__((noinline)) bool make_slot(slot *sl) {
    ucontext_t self, ctx;
    jmp_buf back;
    if (getcontext(&ctx)) return false;
    ctx.uc_stack.ss_sp = sl->stack;
    ctx.uc_stack.ss_size = STACK_BYTES;
    ctx.uc_link = nullptr;
    makecontext(&ctx, slot_entry, 0);
    jmp_buf *prev = main_jb;
    main_jb = &back;
    creating = sl;
#ifdef EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, sl->stack, STACK_BYTES);
#endif
    if (!_setjmp(back)) swapcontext(&self, &ctx);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    main_jb = prev;
    return true;
}

bool grow_slots(int n) {
    static thread_local slot_pool_owner owner;
    (void)owner;
    if (n <= slot_pool_n) return true;
    slot **p = static_cast<slot **>(realloc(slot_pool, sizeof(slot *) * (size_t)n));
    if (!p) return false;
    slot_pool = p;
    for (; slot_pool_n < n; slot_pool_n++) {
        slot *sl = static_cast<slot *>(calloc(1, sizeof(slot)));
        if (!sl) return false;
        sl->stack = static_cast<char *>(aligned_alloc(64, STACK_BYTES));
        if (!sl->stack || !make_slot(sl)) {
            free(sl->stack);
            free(sl);
            return false;
        }
        p[slot_pool_n] = sl;
    }
    return true;
}

uint64_t next_rand(sched *s) { /* xorshift64* */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return s->rng * 2685821657736338717ULL;
}

__attribute__((noinline)) void switch_to_fiber(sched *s, fiber *f) {
    s->cur = f;
    emu_cur = &f->st;
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&s->main_fake, f->sl->stack, STACK_BYTES);
#endif
    if (!_setjmp(s->main_jb)) {
        if (f->started) _longjmp(f->jb, 1);
        f->started = true;
        _longjmp(f->sl->top, 1);
    }
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(s->main_fake, nullptr, nullptr);
#endif
}

__attribute__((noinline)) void switch_to_main(sched *s, fiber *f) {
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&f->sl->fake_stack, main_bottom, main_size);
#endif
    if (!_setjmp(f->jb)) _longjmp(s->main_jb, 1);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(f->sl->fake_stack, &main_bottom, &main_size);
#endif
}

/* Parks at its loop head; each jump there runs the current fiber's body. */
void slot_entry() {
    slot *sl = creating;
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &main_bottom, &main_size);
#endif
    for (;;) {
        if (!_setjmp(sl->top)) {
#ifdef EMU_ASAN
            __sanitizer_start_switch_fiber(&sl->fake_stack, main_bottom, main_size);
#endif
            _longjmp(*main_jb, 1);
        }
#ifdef EMU_ASAN
        __sanitizer_finish_switch_fiber(sl->fake_stack, &main_bottom, &main_size);
#endif
        sched *s = cur_sched;
        fiber *f = s->cur;
        (*s->body)();
        f->state = F_DONE;
    }
}

void wait_at(int state, int kind = 0, unsigned mask = 0) {
    sched *s = cur_sched;
    fiber *f = s->cur;
    int i = f->st.linear;
    f->state = state;
    f->wb_kind = kind;
    f->wb_mask = mask;
    if (state == F_WAIT_BLOCK)
        s->n_block_wait++;
    else
        s->wwait[(size_t)(i >> 5)] |= 1u << (i & 31);
    switch_to_main(s, f);
}

/* Lanes of warp w that exist (the last warp of a block may be partial). */
unsigned warp_lanes(const sched *s, int w) {
    int n = s->n - w * 32;
    return n >= 32 ? 0xffffffffu : (1u << n) - 1;
}
unsigned live_lanes(const sched *s, int w) {
    return s->live[(size_t)w];
}

void fault_at(sched *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fault_at(sched *s, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char full[768];
    snprintf(full, sizeof full, "%s: block (%u,%u,%u): %s", s->kernel ? s->kernel : "kernel",
             emu_blk.idx.x, emu_blk.idx.y, emu_blk.idx.z, msg);
    if (!s->failed && !emu_quiet()) fprintf(stderr, "emu: launch failed: %s\n", full);
    if (!s->failed) emu_set_sticky_error(cudaErrorLaunchFailure, full);
    s->failed = true;
}

/* Merges the vector clocks of the lanes in m (warp w) and ticks each. */
void vc_sync(sched *s, int w, unsigned m) {
    if (!s->racecheck) return;
    uint32_t merged[32] = {0};
    for (int l = 0; l < 32; l++)
        if (m >> l & 1)
            for (int k = 0; k < 32; k++) {
                uint32_t v = s->vc[(size_t)(w * 32 + l) * 32 + k];
                if (v > merged[k]) merged[k] = v;
            }
    for (int l = 0; l < 32; l++)
        if (m >> l & 1) {
            uint32_t *v = &s->vc[(size_t)(w * 32 + l) * 32];
            memcpy(v, merged, sizeof merged);
            v[l]++;
        }
}

/* The lanes lane i's warp barrier waits for; 0 if it names an exited lane
 * (then *exited holds them). */
unsigned barrier_lanes(const sched *s, int i, unsigned *exited) {
    int w = i >> 5;
    const fiber *f = &s->f[(size_t)i];
    unsigned live = s->live[(size_t)w];
    unsigned m =
        f->wb_kind == WB_CONVERGE || f->wb_kind == WB_GATHER ? live : f->wb_mask & warp_lanes(s, w);
    *exited = m & ~live;
    return *exited ? 0 : m;
}

/* The results of an exchange among lanes m of warp w, all arrived. */
void complete_exchange(sched *s, int w, unsigned m, int kind) {
    fiber *lanes = &s->f[(size_t)w * 32];
    unsigned votes = 0;
    for (unsigned b = m; b; b &= b - 1) {
        int k = __builtin_ctz(b);
        if (kind == WB_EXCH && lanes[k].xop == X_BALLOT && lanes[k].xval) votes |= 1u << k;
    }
    for (unsigned b = m; b; b &= b - 1) {
        int k = __builtin_ctz(b);
        fiber *f = &lanes[k];
        if (kind == WB_GATHER) {
            for (unsigned c = m; c; c &= c - 1) {
                int j = __builtin_ctz(c);
                memcpy((char *)f->gdst + (size_t)j * f->gbytes,
                       &s->gather[(size_t)(w * 32 + j) * 64], f->gbytes);
            }
        } else if (f->xop == X_BALLOT) {
            f->xres = votes;
        } else if (!(m >> f->xsrc & 1)) {
            fault_at(s, "shuffle by thread %d reads lane %d, outside its mask 0x%08x", w * 32 + k,
                     f->xsrc, f->wb_mask);
            f->xres = f->xval;
        } else {
            f->xres = lanes[f->xsrc].xval;
        }
    }
}

/* Releases lane i's warp barrier if every lane it names waits at the same
 * one. Returns whether it did. */
bool release_warp_of(sched *s, int i) {
    int w = i >> 5;
    unsigned exited, m = barrier_lanes(s, i, &exited);
    if (!m || (s->wwait[(size_t)w] & m) != m) return false;
    const fiber *f = &s->f[(size_t)i];
    unsigned exist = warp_lanes(s, w);
    bool by_mask = f->wb_kind == WB_SYNC || f->wb_kind == WB_EXCH;
    for (unsigned b = m; b; b &= b - 1) {
        const fiber *g = &s->f[(size_t)(w * 32 + __builtin_ctz(b))];
        if (g->wb_kind != f->wb_kind || (by_mask && (g->wb_mask & exist) != m)) return false;
    }
    int kind = f->wb_kind;
    if (kind == WB_EXCH || kind == WB_GATHER) complete_exchange(s, w, m, kind);
    for (unsigned b = m; b; b &= b - 1) {
        int k = w * 32 + __builtin_ctz(b);
        s->f[(size_t)k].state = F_READY;
        s->ready.push_back(k);
    }
    s->wwait[(size_t)w] &= ~m;
    if (kind == WB_SYNC) {
        vc_sync(s, w, m);
        if (m == s->live[(size_t)w] && s->racecheck) s->full_syncs[(size_t)w]++;
    }
    return true;
}

/* The fallback when nothing is ready: any warp barrier that can be released,
 * or the fault of one that names an exited lane. */
bool release_warps(sched *s) {
    bool any = false;
    for (int w = 0; w * 32 < s->n && !s->failed; w++)
        for (unsigned b = s->wwait[(size_t)w]; b; b &= b - 1) {
            int i = w * 32 + __builtin_ctz(b);
            if (!(s->wwait[(size_t)w] >> (i & 31) & 1)) continue; /* released meanwhile */
            unsigned exited;
            if (!barrier_lanes(s, i, &exited)) {
                const fiber *f = &s->f[(size_t)i];
                fault_at(s, "%s mask 0x%08x names lane(s) 0x%08x of warp %d that already exited",
                         f->wb_kind == WB_SYNC ? "__syncwarp" : "shuffle/vote", f->wb_mask, exited,
                         w);
                return false;
            }
            any |= release_warp_of(s, i);
        }
    return any;
}

/* 1: released a block barrier, 0: all done, -1: deadlock. */
int release_block(sched *s) {
    if (!s->n_live) return 0;
    if (s->n_block_wait != s->n_live) return -1;
    for (int i = 0; i < s->n; i++)
        if (s->f[(size_t)i].state == F_WAIT_BLOCK) {
            s->f[(size_t)i].state = F_READY;
            s->ready.push_back(i);
        }
    s->n_block_wait = 0;
    s->phase++;
    return 1;
}

void describe_deadlock(sched *s) {
    std::string d;
    int shown = 0;
    for (int i = 0; i < s->n && shown < 6; i++) {
        const fiber *f = &s->f[(size_t)i];
        if (f->state == F_DONE) continue;
        char b[96];
        if (f->state == F_WAIT_BLOCK)
            snprintf(b, sizeof b, "thread %d at __syncthreads; ", i);
        else
            snprintf(b, sizeof b, "thread %d at a %s (mask 0x%08x); ", i,
                     f->wb_kind == WB_SYNC   ? "__syncwarp"
                     : f->wb_kind == WB_EXCH ? "shuffle/vote"
                                             : "warp collective",
                     f->wb_mask);
        d += b;
        shown++;
    }
    fault_at(s, "barrier not reached by every thread it waits for (deadlock): %s", d.c_str());
}

void init_fiber(fiber *f) {
    f->state = F_READY;
    f->started = false;
    f->collective = 0;
    f->copies.clear();
    f->groups = 0;
}

void run_block(sched *s) {
    s->ready.clear();
    for (int i = 0; i < s->n; i++) {
        init_fiber(&s->f[(size_t)i]);
        s->ready.push_back(i);
    }
    for (int w = 0; w * 32 < s->n; w++)
        s->live[(size_t)w] = warp_lanes(s, w), s->wwait[(size_t)w] = 0;
    s->n_live = s->n;
    s->n_block_wait = 0;
    std::memset(s->smem, 0xff, s->dyn_bytes + s->static_used);
    s->gen++;
    s->phase = 1;
    if (s->racecheck) {
        std::fill(s->vc.begin(), s->vc.end(), 0u);
        for (int i = 0; i < s->n; i++)
            s->vc[(size_t)i * 32 + (i & 31)] = 1;
        std::fill(s->full_syncs.begin(), s->full_syncs.end(), 0u);
    }
    for (;;) {
        while (!s->ready.empty() && !s->failed) {
            size_t k = (size_t)(next_rand(s) % s->ready.size());
            int i = s->ready[k];
            fiber *f = &s->f[(size_t)i];
            switch_to_fiber(s, f);
            if (f->state == F_READY) continue; /* switched out at an access */
            s->ready[k] = s->ready.back();     /* waits or finished: off the ready list */
            s->ready.pop_back();
            int w = i >> 5;
            if (f->state == F_WAIT_WARP) {
                release_warp_of(s, i);
            } else if (f->state == F_DONE) {
                s->live[(size_t)w] &= ~(1u << (i & 31));
                s->n_live--;
                unsigned wt = s->wwait[(size_t)w]; /* a convergence may now be complete */
                if (wt) release_warp_of(s, w * 32 + __builtin_ctz(wt));
            }
        }
        if (s->failed) return; /* the stuck fibers are abandoned; their stacks are reused */
        if (release_warps(s)) continue;
        if (s->failed) return;
        int r = release_block(s);
        if (r == 0) return;
        if (r < 0) {
            describe_deadlock(s);
            return;
        }
    }
}

/* The launch's block order: a seeded permutation of the linear block ids. */
struct block_order {
    std::vector<uint32_t> perm;
    uint64_t n, a, c; /* affine map for grids too large for a table */
    uint64_t at(uint64_t i) const { return perm.empty() ? (a * i + c) % n : perm[(size_t)i]; }
};

uint64_t gcd64(uint64_t a, uint64_t b) {
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

void make_order(sched *s, uint64_t n, block_order *o) {
    o->n = n;
    if (n <= ((uint64_t)1 << 22)) {
        o->perm.resize((size_t)n);
        for (uint64_t i = 0; i < n; i++)
            o->perm[(size_t)i] = (uint32_t)i;
        for (uint64_t i = n; i > 1; i--)
            std::swap(o->perm[(size_t)(i - 1)], o->perm[(size_t)(next_rand(s) % i)]);
        return;
    }
    do
        o->a = next_rand(s) % n;
    while (o->a == 0 || gcd64(o->a, n) != 1);
    o->c = next_rand(s) % n;
}

std::atomic<unsigned long long> launch_serial{0};

/* ---- the race detector ---- */

int warp_of(int32_t tid) {
    return tid >= 0 ? tid >> 5 : -tid - 1;
}

/* Is access a ordered before the current access of thread u (or of u's warp
 * collectively when coll)? A collective read (ldmatrix, a WMMA load) is one
 * warp-synchronous instruction: done for every lane before any goes on. */
bool ordered(const sched *s, const access_rec &a, int u, bool coll, bool a_read) {
    if (a.tid == NO_TID || a.phase < s->phase) return true;
    int wu = u >> 5;
    if (warp_of(a.tid) != wu) return false;
    int32_t uid = coll ? -wu - 1 : u;
    if (a.tid == uid || (a.tid < 0 && a_read)) return true;
    if (a.tid >= 0 && !coll) return s->vc[(size_t)u * 32 + (a.tid & 31)] >= a.clock;
    return s->full_syncs[(size_t)wu] > a.fs; /* collective on either side */
}

const char *where(sched *s, size_t off, char *buf, size_t len) {
    if (off < s->dyn_bytes) {
        snprintf(buf, len, "dynamic shared memory, byte %zu", off);
        return buf;
    }
    for (const static_var &v : s->statics)
        if (off >= v.off && off < v.off + v.bytes) {
            snprintf(buf, len, "static shared '%s', byte %zu", v.name, off - v.off);
            return buf;
        }
    snprintf(buf, len, "shared memory byte %zu", off);
    return buf;
}

void who(const access_rec &a, char *buf, size_t len) {
    if (a.tid >= 0)
        snprintf(buf, len, "thread %d", a.tid);
    else
        snprintf(buf, len, "warp %d (collectively)", -a.tid - 1);
}

void report_race(sched *s, size_t off, const access_rec &now, bool write, const access_rec &prev,
                 bool prev_write) {
    char w[96], a[32], b[32];
    who(now, a, sizeof a);
    who(prev, b, sizeof b);
    emu_counters_add_race();
    fault_at(s,
             "shared-memory race: %s %s %s, which %s %s with no barrier between them "
             "(a missing __syncthreads or __syncwarp)",
             a, write ? "writes" : "reads", where(s, off, w, sizeof w), b,
             prev_write ? "wrote" : "read");
}

void check_access(sched *s, fiber *f, uintptr_t addr, size_t size, bool write) {
    int u = f->st.linear;
    bool coll = f->collective > 0;
    access_rec cur = {coll ? -(u >> 5) - 1 : u, s->phase, s->vc[(size_t)u * 32 + (u & 31)],
                      s->full_syncs[(size_t)(u >> 5)]};
    size_t off0 = addr - smem_lo, g0 = off0 / 2, g1 = (off0 + (size ? size : 1) - 1) / 2;
    if (g1 >= s->shadow.size()) s->shadow.resize(std::max(g1 + 1, 2 * s->shadow.size()));
    for (size_t gi = g0; gi <= g1 && !s->failed; gi++) {
        granule &g = s->shadow[gi];
        if (g.gen != s->gen)
            g = granule{s->gen, 0, 0, {NO_TID, 0, 0, 0}, {NO_TID, 0, 0, 0}, {NO_TID, 0, 0, 0}};
        if (!ordered(s, g.w, u, coll, false)) return report_race(s, gi * 2, cur, write, g.w, true);
        if (write) {
            if (!ordered(s, g.r1, u, coll, true))
                return report_race(s, gi * 2, cur, true, g.r1, false);
            if (!ordered(s, g.r2, u, coll, true))
                return report_race(s, gi * 2, cur, true, g.r2, false);
            if (g.multi && g.multi_phase == s->phase)
                return report_race(s, gi * 2, cur, true, g.r1, false);
            g.w = cur;
            g.r1.tid = g.r2.tid = NO_TID;
            g.multi = 0;
        } else if (ordered(s, g.r1, u, coll, true) && ordered(s, g.r2, u, coll, true)) {
            g.r1 = cur;
            g.r2.tid = NO_TID;
        } else if (ordered(s, g.r2, u, coll, true)) {
            g.r2 = cur;
        } else {
            g.multi = 1;
            g.multi_phase = s->phase;
            g.r2 = cur;
        }
    }
}

void yield_fiber(sched *s, fiber *f) {
    f->state = F_READY;
    switch_to_main(s, f);
}

/* Every instrumented load/store of kernel code comes here. */
inline void on_access(const void *p, size_t size, bool write) {
    uintptr_t a = (uintptr_t)p;
    if (a - smem_lo >= smem_hi - smem_lo) return;
    sched *s = cur_sched;
    fiber *f = s ? s->cur : nullptr;
    if (!f || s->failed || emu_cur != &f->st) return;
    if (s->racecheck) check_access(s, f, a, size, write);
    if (!f->collective && next_rand(s) % YIELD_ONE_IN == 0) yield_fiber(s, f);
}

/* An access made by the emulator on the running thread's behalf (ldmatrix's
 * reads, cp.async's writes): checked like the thread's own. */
void note_access(const void *p, size_t size, bool write, bool collective) {
    uintptr_t a = (uintptr_t)p;
    sched *s = cur_sched;
    fiber *f = s ? s->cur : nullptr;
    if (!f || !s->racecheck || s->failed || a - smem_lo >= smem_hi - smem_lo) return;
    f->collective += collective;
    check_access(s, f, a, size, write);
    f->collective -= collective;
}

bool in_smem(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    return a >= smem_lo && a + n <= smem_hi;
}

} // namespace

/* ---- tensor cores and async copies, lane by lane as the PTX ISA has them ---- */

void emu_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    struct frag {
        uint32_t a[4], b[2];
    } mine, all[32];
    memcpy(mine.a, a, sizeof mine.a);
    memcpy(mine.b, b, sizeof mine.b);
    sched *s = cur_sched;
    if (live_lanes(s, emu_cur->linear >> 5) != 0xffffffffu) {
        fault_at(s, "mma.sync with a partial warp");
        return;
    }
    emu_warp_gather(&mine, sizeof mine, all);
    auto h = [](uint32_t v, int hi) { return emu_half_table[hi ? v >> 16 : v & 0xffffu]; };
    int lane = emu_cur->linear & 31, g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; i++) {
        int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float acc = 0.0f;
        for (int k = 0; k < 16; k++) {
            /* A[row][k]: lane (row%8)*4 + (k%8)/2, register (row>=8) + 2(k>=8), half k%2 */
            float av = h(all[(row & 7) * 4 + ((k & 7) >> 1)].a[(row >= 8) + 2 * (k >= 8)], k & 1);
            /* B[k][col]: lane col*4 + (k%8)/2, register (k>=8), half k%2 */
            float bv = h(all[col * 4 + ((k & 7) >> 1)].b[k >= 8], k & 1);
            acc += av * bv;
        }
        d[i] += acc;
    }
}

void emu_ldmatrix_x4(uint32_t r[4], const void *row, int trans) {
    sched *s = cur_sched;
    const void *all[32];
    if (live_lanes(s, emu_cur->linear >> 5) != 0xffffffffu) {
        fault_at(s, "ldmatrix with a partial warp");
        return;
    }
    emu_warp_gather(&row, sizeof row, all);
    int lane = emu_cur->linear & 31;
    if (((uintptr_t)row & 15) || !in_smem(row, 16)) {
        fault_at(s, "ldmatrix: lane %d's row address %p is not 16-byte aligned shared memory", lane,
                 row);
        return;
    }
    for (int j = 0; j < 4; j++) {
        uint16_t lo, hi;
        const uint16_t *p0, *p1;
        if (!trans) { /* row l/4, cols 2(l%4), +1 */
            p0 = (const uint16_t *)all[j * 8 + lane / 4] + 2 * (lane & 3);
            p1 = p0 + 1;
        } else { /* rows 2(l%4), +1, col l/4 */
            p0 = (const uint16_t *)all[j * 8 + 2 * (lane & 3)] + lane / 4;
            p1 = (const uint16_t *)all[j * 8 + 2 * (lane & 3) + 1] + lane / 4;
        }
        note_access(p0, 2, false, true);
        note_access(p1, 2, false, true);
        lo = *p0, hi = *p1;
        r[j] = (uint32_t)lo | (uint32_t)hi << 16;
    }
    emu_warp_converge(); /* every lane has read before any goes on (one instruction) */
}

void emu_cp_async(void *dst, const void *src, int bytes, int n) {
    sched *s = cur_sched;
    if (((uintptr_t)dst | (uintptr_t)src) % (uintptr_t)bytes || !in_smem(dst, (size_t)bytes) ||
        n < 0 || n > bytes) {
        fault_at(s, "cp.async: %d of %d bytes from %p to %p (unaligned, or not into shared memory)",
                 n, bytes, src, dst);
        return;
    }
    /* The copy may land any time from now to the wait: race-checked as a
     * write now (another thread still reading dst is a race) and again when
     * it lands at the wait (a read before the wait sees the old data). */
    note_access(dst, (size_t)bytes, true, false);
    s->cur->copies.push_back({dst, src, bytes, n, s->cur->groups});
}

void emu_cp_async_commit() {
    cur_sched->cur->groups++;
}

void emu_cp_async_wait(int pending) {
    fiber *f = cur_sched->cur;
    long done_below = f->groups - pending; /* groups older than this must have landed */
    size_t k = 0;
    for (size_t i = 0; i < f->copies.size(); i++) {
        async_copy &c = f->copies[i];
        if (c.group < done_below) {
            note_access(c.dst, (size_t)c.bytes, true, false);
            memcpy(c.dst, c.src, (size_t)c.n);
            memset((char *)c.dst + c.n, 0, (size_t)(c.bytes - c.n));
        } else {
            f->copies[k++] = c;
        }
    }
    f->copies.resize(k);
}

/* ---- counters shared with the runtime ---- */
static std::atomic<long> races_found{0};
void emu_counters_add_race() {
    races_found++;
}
long emu_counters_races() {
    return races_found.load();
}

void emu_fault(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sched *s = cur_sched;
    if (s)
        fault_at(s, "%s", msg);
    else
        emu_set_sticky_error(cudaErrorLaunchFailure, msg);
}

cudaError_t emu_run_grid(const char *name, dim3 grid, dim3 block, size_t dyn_smem,
                         const std::function<void()> &body) {
    long nthreads = (long)block.x * block.y * block.z;
    sched s;
    s.n = (int)nthreads;
    s.body = &body;
    s.kernel = name;
    s.f.resize((size_t)s.n);
    s.gather.assign((size_t)((s.n + 31) / 32) * 32 * 64, 0);
    s.live.assign((size_t)(s.n + 31) / 32, 0);
    s.wwait.assign((size_t)(s.n + 31) / 32, 0);
    s.smem = static_cast<unsigned char *>(aligned_alloc(128, SMEM_BYTES));
    if (!s.smem || !grow_slots(s.n)) {
        free(s.smem);
        return cudaErrorMemoryAllocation;
    }
    s.dyn_bytes = (dyn_smem + 127) / 128 * 128;
    s.static_used = 0;
    s.failed = false;
    s.main_fake = nullptr;
    unsigned long long serial = launch_serial++;
    s.rng = (emu_seed() ^ (serial * 0x9e3779b97f4a7c15ULL)) | 1;
    s.gen = 0;
    s.phase = 1;
#ifdef EASEL_EMU_RACECHECK
    s.racecheck = true;
    s.shadow.assign(s.dyn_bytes / 2 + 64, granule{0, 0, 0, {}, {}, {}});
    s.vc.assign((size_t)s.n * 32, 0);
    s.full_syncs.assign((size_t)(s.n + 31) / 32, 0);
#else
    s.racecheck = false;
#endif
    for (int i = 0; i < s.n; i++) {
        fiber *f = &s.f[(size_t)i];
        f->sl = slot_pool[i];
        f->st.tid = {(unsigned)(i % block.x), (unsigned)(i / block.x % block.y),
                     (unsigned)(i / (block.x * block.y))};
        f->st.linear = i;
    }
    sched *prev = cur_sched;
    jmp_buf *prev_jb = main_jb;
    main_jb = &s.main_jb;
    emu_thread_state *prev_cur = emu_cur;
    emu_block_state prev_blk = emu_blk;
    uintptr_t prev_lo = smem_lo, prev_hi = smem_hi;
    cur_sched = &s;
    emu_blk.dim = {block.x, block.y, block.z};
    emu_blk.grid = {grid.x, grid.y, grid.z};
    smem_lo = (uintptr_t)s.smem;
    smem_hi = smem_lo + SMEM_BYTES;
    uint64_t nb = (uint64_t)grid.x * grid.y * grid.z;
    block_order order;
    make_order(&s, nb, &order);
    for (uint64_t i = 0; i < nb && !s.failed; i++) {
        uint64_t b = order.at(i);
        emu_blk.idx = {(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
                       (unsigned)(b / ((uint64_t)grid.x * grid.y))};
        run_block(&s);
    }
    cur_sched = prev;
    main_jb = prev_jb;
    emu_cur = prev_cur;
    emu_blk = prev_blk;
    smem_lo = prev_lo;
    smem_hi = prev_hi;
    free(s.smem);
    return s.failed ? cudaErrorLaunchFailure : cudaSuccess;
}

void emu_launch(dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()> &body) {
    emu_launch_kernel(nullptr, "test kernel", grid, block, dyn_smem, nullptr, body);
}

void *emu_dyn_smem() {
    sched *s = cur_sched;
    return s ? s->smem : nullptr;
}

void *emu_static_smem(const void *key, size_t bytes, const char *name) {
    sched *s = cur_sched;
    if (!s) return nullptr;
    for (const static_var &v : s->statics)
        if (v.key == key) return s->smem + v.off;
    size_t off = s->dyn_bytes + (s->static_used + 15) / 16 * 16;
    if (s->static_used + bytes > EMU_SMEM_DEFAULT || off + bytes > EMU_SMEM_OPTIN) {
        fault_at(s,
                 "static shared '%s' (%zu bytes) exceeds the limit (48 KiB static, 227 KiB in all)",
                 name, bytes);
        return s->smem; /* the launch is failing; keep the kernel's accesses in bounds */
    }
    s->statics.push_back({key, off, bytes, name});
    s->static_used = off + bytes - s->dyn_bytes;
    std::memset(s->smem + off, 0xff, bytes);
    return s->smem + off;
}

void emu_barrier_block() {
    wait_at(F_WAIT_BLOCK);
}

static void check_mask(sched *s, unsigned mask, const char *what) {
    int lane = emu_cur->linear & 31;
    if (!(mask >> lane & 1))
        fault_at(s, "%s by thread %d with mask 0x%08x, which does not include its lane", what,
                 emu_cur->linear, mask);
}

void emu_syncwarp(unsigned mask) {
    sched *s = cur_sched;
    check_mask(s, mask, "__syncwarp");
    wait_at(F_WAIT_WARP, WB_SYNC, mask);
}

void emu_warp_converge() {
    wait_at(F_WAIT_WARP, WB_CONVERGE, 0);
}

uint64_t emu_warp_exchange(uint64_t v, int src_lane, unsigned mask) {
    sched *s = cur_sched;
    fiber *f = s->cur;
    check_mask(s, mask, "shuffle");
    f->xop = X_SHUFFLE, f->xval = v, f->xsrc = src_lane & 31;
    wait_at(F_WAIT_WARP, WB_EXCH, mask);
    return f->xres;
}

unsigned emu_warp_ballot(int pred, unsigned mask) {
    sched *s = cur_sched;
    fiber *f = s->cur;
    check_mask(s, mask, "vote");
    f->xop = X_BALLOT, f->xval = pred != 0;
    wait_at(F_WAIT_WARP, WB_EXCH, mask);
    return (unsigned)f->xres;
}

void emu_warp_gather(const void *mine, size_t bytes, void *all) {
    sched *s = cur_sched;
    fiber *f = s->cur;
    if (bytes > 64) {
        fault_at(s, "emu_warp_gather of %zu bytes per lane (at most 64)", bytes);
        return;
    }
    std::memcpy(&s->gather[(size_t)f->st.linear * 64], mine, bytes);
    f->gdst = all, f->gbytes = bytes;
    wait_at(F_WAIT_WARP, WB_GATHER, 0);
}

void emu_collective_begin() {
    sched *s = cur_sched;
    if (s && s->cur) s->cur->collective++;
}
void emu_collective_end() {
    sched *s = cur_sched;
    if (s && s->cur) s->cur->collective--;
}
int emu_collective_leader() {
    sched *s = cur_sched;
    int me = emu_cur->linear;
    unsigned live = live_lanes(s, me >> 5);
    return live && (int)__builtin_ctz(live) == (me & 31);
}

/* ---- ThreadSanitizer instrumentation entry points (the access hooks) ---- */
#ifdef EASEL_EMU_RACECHECK
extern "C" {
#define EMU_HOOKS(n)                                                                               \
    void __tsan_read##n(void *p) {                                                                 \
        on_access(p, n, false);                                                                    \
    }                                                                                              \
    void __tsan_write##n(void *p) {                                                                \
        on_access(p, n, true);                                                                     \
    }                                                                                              \
    void __tsan_unaligned_read##n(void *p) {                                                       \
        on_access(p, n, false);                                                                    \
    }                                                                                              \
    void __tsan_unaligned_write##n(void *p) {                                                      \
        on_access(p, n, true);                                                                     \
    }
EMU_HOOKS(1)
EMU_HOOKS(2)
EMU_HOOKS(4)
EMU_HOOKS(8)
EMU_HOOKS(16)
void __tsan_read_range(void *p, unsigned long n) {
    on_access(p, n, false);
}
void __tsan_write_range(void *p, unsigned long n) {
    on_access(p, n, true);
}
void __tsan_init(void) {}
void __tsan_func_entry(void *) {}
void __tsan_func_exit(void) {}
void __tsan_vptr_update(void **, void *) {}
void __tsan_vptr_read(void **) {}
}
#endif
