# C support of the engine: recipient table memory (huge pages for big tables,
# byte counts), cache prefetch, key layout and the two-thread copy.

cdef extern from *:
    """
    #include <pthread.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/mman.h>
    /* Big recipient tables get their own zeroed mapping, with transparent huge
       pages requested: random probes into a 1 GB table then miss the TLB far
       less often. Small ones come from calloc. The size decides, so the free
       matches the allocation. */
    #define TG_BIG_TABLE ((size_t)2 << 20)
    /* Counts table allocations and frees in this process, so that an engine
       recounts its tables' bytes only after one (see Engine.prefetching). */
    static uint64_t tg_table_changes = 1;
    /* Bytes the tables of every engine in this process hold (tests check
       that growth, reclaim and freeing give all of it back). */
    static uint64_t tg_table_bytes = 0;
    static void *tg_table_alloc(size_t bytes) {
        void *p;
    #if defined(MAP_ANONYMOUS)
        if (bytes >= TG_BIG_TABLE) {
            p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) return NULL;
    #if defined(MADV_HUGEPAGE)
            madvise(p, bytes, MADV_HUGEPAGE);
    #endif
            __atomic_fetch_add(&tg_table_changes, 1, __ATOMIC_RELAXED);
            __atomic_fetch_add(&tg_table_bytes, bytes, __ATOMIC_RELAXED);
            return p;
        }
    #endif
        p = calloc(1, bytes);
        if (p != NULL) {
            __atomic_fetch_add(&tg_table_changes, 1, __ATOMIC_RELAXED);
            __atomic_fetch_add(&tg_table_bytes, bytes, __ATOMIC_RELAXED);
        }
        return p;
    }
    static void tg_table_free(void *p, size_t bytes) {
        if (p == NULL) return;
        __atomic_fetch_add(&tg_table_changes, 1, __ATOMIC_RELAXED);
        __atomic_fetch_sub(&tg_table_bytes, bytes, __ATOMIC_RELAXED);
    #if defined(MAP_ANONYMOUS)
        if (bytes >= TG_BIG_TABLE) { munmap(p, bytes); return; }
    #endif
        free(p);
    }
    /* Write a zero into every page of [p + from, p + to): the first write to
       a page of a new mapping is when the kernel zeroes it. */
    static inline void tg_touch(void *p, size_t from, size_t to) {
        volatile char *c = (volatile char *)p;
        for (size_t i = from; i < to; i += 4096) c[i] = 0;
    }
    static inline uint64_t tg_table_bytes_held(void) {
        return __atomic_load_n(&tg_table_bytes, __ATOMIC_RELAXED);
    }
    static inline uint64_t tg_table_generation(void) {
        return __atomic_load_n(&tg_table_changes, __ATOMIC_RELAXED);
    }
    /* The start of the cache line holding p. */
    static inline const char *tg_line(const void *p) {
        return (const char *)((uintptr_t)p & ~(uintptr_t)63);
    }
    /* Start fetching the cache line holding p. An asm statement on x86: GCC
       at -O2 may delete __builtin_prefetch calls that sit in a helper behind
       a condition, and a volatile asm is never deleted. Prefetches do not
       fault. */
    static inline void tg_prefetch(const void *p) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)p));
    #else
        __builtin_prefetch(p);
    #endif
    }
    /* The same for a line wanted once, soon: decide_batch's scope-table lines,
       read and written within a few microseconds and then not for minutes.
       The non-temporal hint keeps them from pushing the number tables and
       rings every decision reads out of the L2 cache. */
    static inline void tg_prefetch_once(const void *p) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __asm__ volatile("prefetchnta %0" : : "m"(*(const char *)p));
    #else
        __builtin_prefetch(p, 0, 0);
    #endif
    }
    /* An entry's key word: the recipient key (below 2**54, the range
       constants.recipient_key packs E.164 numbers into) in the low bits,
       then the entry's distance from its home slot (saturating at DIST_MAX),
       then, in scope entries, two flags. */
    #define TG_KEY_OPT_OUT ((uint64_t)1 << 63)
    #define TG_KEY_MARKETING ((uint64_t)1 << 62)
    #define TG_DIST_SHIFT 54
    #define TG_DIST_MAX ((uint64_t)0xFF)
    #define TG_DIST_BITS (TG_DIST_MAX << TG_DIST_SHIFT)
    #define TG_KEY_MASK (((uint64_t)1 << TG_DIST_SHIFT) - 1)
    /* h scaled from [0, 2**64) to [0, n): a home slot for any table size. */
    static inline uint64_t tg_scale(uint64_t h, uint64_t n) {
        return (uint64_t)(((unsigned __int128)h * n) >> 64);
    }
    /* One memcpy of Engine.copy(). */
    typedef struct { char *dst; const char *src; size_t n; } tg_copy_job;
    static void *tg_copy_run(void *arg) {
        tg_copy_job *j;
        for (j = (tg_copy_job *)arg; j->dst != NULL; j++) memcpy(j->dst, j->src, j->n);
        return NULL;
    }
    /* Below this many bytes in all, Engine.copy() copies in one thread. */
    #define TG_COPY_SPLIT_BYTES ((size_t)8 << 20)
    /* Do every copy of jobs[0..count) (dst never NULL), the bytes split in two
       halves, one of them copied by a second thread while this one copies the
       other: the event loop waits for the copy, and one core alone does not
       reach the memory's bandwidth. */
    static void tg_copy_all(const tg_copy_job *jobs, size_t count) {
        size_t total = 0, half, acc = 0, cut, i, m = 0, t = 0;
        tg_copy_job *mine, *theirs;
        pthread_t helper;
        for (i = 0; i < count; i++) total += jobs[i].n;
        mine = total >= TG_COPY_SPLIT_BYTES ? calloc(count + 2, sizeof *mine) : NULL;
        theirs = mine != NULL ? calloc(count + 2, sizeof *theirs) : NULL;
        if (theirs == NULL) {
            free(mine);
            for (i = 0; i < count; i++) memcpy(jobs[i].dst, jobs[i].src, jobs[i].n);
            return;
        }
        half = total / 2;
        for (i = 0; i < count; i++) {
            if (acc >= half) {
                theirs[t++] = jobs[i];
            } else if (acc + jobs[i].n <= half) {
                mine[m++] = jobs[i];
            } else {
                cut = half - acc;
                mine[m].dst = jobs[i].dst;
                mine[m].src = jobs[i].src;
                mine[m++].n = cut;
                theirs[t].dst = jobs[i].dst + cut;
                theirs[t].src = jobs[i].src + cut;
                theirs[t++].n = jobs[i].n - cut;
            }
            acc += jobs[i].n;
        }
        /* calloc'd: the entry after the last has dst NULL, the end mark */
        if (pthread_create(&helper, NULL, tg_copy_run, theirs) != 0) {
            tg_copy_run(theirs);
            tg_copy_run(mine);
        } else {
            tg_copy_run(mine);
            pthread_join(helper, NULL);
        }
        free(mine);
        free(theirs);
    }
    """
    ctypedef struct tg_copy_job:
        char *dst
        const char *src
        size_t n
    void tg_copy_all(const tg_copy_job *jobs, size_t count) noexcept nogil
    void tg_prefetch(const void *p) noexcept nogil
    void tg_prefetch_once(const void *p) noexcept nogil
    const char *tg_line(const void *p) noexcept nogil
    uint64_t tg_scale(uint64_t h, uint64_t n) noexcept nogil
    const uint64_t KEY_OPT_OUT "TG_KEY_OPT_OUT"
    const uint64_t KEY_MARKETING "TG_KEY_MARKETING"
    const int DIST_SHIFT "TG_DIST_SHIFT"
    const uint64_t DIST_MAX "TG_DIST_MAX"
    const uint64_t DIST_BITS "TG_DIST_BITS"
    const uint64_t KEY_MASK "TG_KEY_MASK"
    void *tg_table_alloc(size_t nbytes) noexcept nogil
    void tg_table_free(void *p, size_t nbytes) noexcept nogil
    uint64_t tg_table_generation() noexcept nogil
    void tg_touch(void *p, size_t start, size_t end) noexcept nogil
    uint64_t tg_table_bytes_held() noexcept nogil
    const size_t BIG_TABLE "TG_BIG_TABLE"
