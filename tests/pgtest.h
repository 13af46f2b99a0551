/* A real, throwaway PostgreSQL server for the C tests (tools/pgtmp.sh):
 * started on first use in a temp dir (a unix socket there, no TCP), one
 * fresh database per case, stopped and removed at exit. pgt_up() says why
 * when there is none: no initdb installed, or easel built without libpq.
 * PG_OR_SKIP() skips a case then, except where a server is owed: one that
 * was found but did not start, or EASEL_REQUIRE_PG=1 (CI, which installs
 * PostgreSQL: a missing server there is a broken CI, not a skip). */
#ifndef EASEL_PGTEST_H
#define EASEL_PGTEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char pgt_dir_[64];
static int pgt_state_; /* 0 not tried, 1 up, -1 none */
static char pgt_why_[200];
static int pgt_owed_; /* a missing server is a failure (it did not start, or EASEL_REQUIRE_PG) */

static inline void pgt_stop_(void) {
    if (pgt_state_ != 1) return;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "%s/tools/pgtmp.sh stop %s immediate; rm -rf %s", EASEL_SOURCE_DIR,
             pgt_dir_, pgt_dir_);
    if (system(cmd)) fprintf(stderr, "pgtest: could not stop %s\n", pgt_dir_);
    pgt_state_ = 0;
}

/* 1 when a server runs (started now if need be); else 0 and *why says why. */
static inline int pgt_up(const char **why) {
    if (pgt_state_ == 0) {
        pgt_state_ = -1;
        const char *req = getenv("EASEL_REQUIRE_PG");
        pgt_owed_ = req && req[0] && strcmp(req, "0");
#ifndef EASEL_HAVE_PG
        snprintf(pgt_why_, sizeof pgt_why_, "no PostgreSQL: easel was built without libpq");
#else
        char cmd[300];
        snprintf(cmd, sizeof cmd, "%s/tools/pgtmp.sh bin >/dev/null 2>&1", EASEL_SOURCE_DIR);
        snprintf(pgt_dir_, sizeof pgt_dir_, "/tmp/easel-pgt-XXXXXX");
        if (system(cmd)) {
            snprintf(pgt_why_, sizeof pgt_why_, "no PostgreSQL (initdb not installed)");
        } else if (!mkdtemp(pgt_dir_)) {
            snprintf(pgt_why_, sizeof pgt_why_, "no PostgreSQL: cannot make a temp dir");
        } else {
            snprintf(cmd, sizeof cmd, "%s/tools/pgtmp.sh start %s >/dev/null", EASEL_SOURCE_DIR,
                     pgt_dir_);
            if (system(cmd)) {
                snprintf(pgt_why_, sizeof pgt_why_, "PostgreSQL did not start (see %s)", pgt_dir_);
                /* a server that cannot start is a failure of the test machine, not a skip */
                fprintf(stderr, "pgtest: FAIL: %s\n", pgt_why_);
                pgt_owed_ = 1;
            } else {
                pgt_state_ = 1;
                atexit(pgt_stop_);
            }
        }
#endif
    }
    if (why) *why = pgt_why_;
    return pgt_state_ == 1;
}

/* In a test case: skip it when there is no server, fail it when one is owed. */
#define PG_OR_SKIP()                                                                               \
    do {                                                                                           \
        const char *why_;                                                                          \
        if (!pgt_up(&why_)) {                                                                      \
            if (pgt_owed_)                                                                         \
                REQUIRE(0,                                                                         \
                        "PostgreSQL is required here (EASEL_REQUIRE_PG=1 or it did not "           \
                        "start): %s",                                                              \
                        why_);                                                                     \
            SKIP("%s", why_);                                                                      \
        }                                                                                          \
    } while (0)

/* A fresh empty database `name` (dropped first if it exists); its URL in url. */
static inline int pgt_createdb(const char *name, char *url, size_t n) {
    if (!pgt_up(NULL)) return -1;
    char cmd[400];
    snprintf(cmd, sizeof cmd,
             "PGOPTIONS='-c client_min_messages=warning' %s/tools/pgtmp.sh createdb %s %s",
             EASEL_SOURCE_DIR, pgt_dir_, name);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    int ok = fgets(url, (int)n, p) != NULL;
    ok = pclose(p) == 0 && ok;
    if (ok) url[strcspn(url, "\n")] = 0;
    return ok ? 0 : -1;
}

/* The server stopped at once (as by a crash: "immediate") or started again. */
static inline int pgt_ctl(const char *what) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "%s/tools/pgtmp.sh %s %s%s >/dev/null", EASEL_SOURCE_DIR,
             !strcmp(what, "start") ? "start" : "stop", pgt_dir_,
             !strcmp(what, "start") ? "" : " immediate");
    return system(cmd);
}

#endif
