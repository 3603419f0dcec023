/*
 * powercut: an LD_PRELOAD shim that keeps an undo log of everything a
 * process writes under one directory and has not made durable yet, so that
 * after a kill -9 a tool can roll the directory back to what a power cut
 * may leave (see chaos/src/powercut.rs and docs/reliability.md).
 *
 * Environment:
 *   POWERCUT_ROOT  absolute path of the directory to watch (nothing outside
 *                  it is recorded);
 *   POWERCUT_LOG   the undo log, appended to (put it outside the root).
 *
 * The model (the worst POSIX allows, as LazyFS and ALICE model it):
 * - a file's bytes and size are durable only once fsync or fdatasync of the
 *   file returns; sync_file_range makes nothing durable (it flushes neither
 *   metadata nor the device's cache);
 * - a file or directory created is durable only once its parent directory
 *   is fsynced (an fsync of the file itself does not make its entry
 *   durable);
 * - rename and unlink are taken as durable at once (a simplification: a
 *   real power cut may also undo them).
 *
 * Each record is written with one write(2) to the log before the change it
 * undoes is made, under one lock, so the log survives a kill -9 in the order
 * of the changes. Records (native endian):
 *   u8 kind, u32 path length, path, u64 offset, u64 old size,
 *   u64 data length, data
 * kinds: 'W' old bytes of [offset, offset + data length) and the file's old
 * size, before a write or a truncation; 'C' a file or directory created;
 * 'S' the file is durable; 'D' the entries of the directory are durable;
 * 'R' a rename (data is the new path); 'U' an unlink or rmdir.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FDS 65536

static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static char *fd_path[MAX_FDS];
static char root[PATH_MAX];
static size_t root_len;
static int log_fd = -1;
static int ready;

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_creat)(const char *, mode_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static int (*real_rmdir)(const char *);
static int (*real_mkdir)(const char *, mode_t);
static int (*real_mkdirat)(int, const char *, mode_t);
static int (*real_close)(int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);

#define LOAD(name) real_##name = dlsym(RTLD_NEXT, #name)

__attribute__((constructor)) static void init(void) {
    LOAD(open); LOAD(open64); LOAD(openat); LOAD(openat64); LOAD(creat);
    LOAD(write); LOAD(pwrite); LOAD(pwrite64); LOAD(writev);
    LOAD(fsync); LOAD(fdatasync); LOAD(ftruncate); LOAD(ftruncate64);
    LOAD(rename); LOAD(renameat); LOAD(unlink); LOAD(unlinkat); LOAD(rmdir);
    LOAD(mkdir); LOAD(mkdirat); LOAD(close); LOAD(dup); LOAD(dup2);
    LOAD(dup3); LOAD(fcntl);
    const char *r = getenv("POWERCUT_ROOT");
    const char *l = getenv("POWERCUT_LOG");
    if (!r || !l || strlen(r) >= sizeof root) return;
    strcpy(root, r);
    root_len = strlen(root);
    while (root_len > 1 && root[root_len - 1] == '/') root[--root_len] = 0;
    log_fd = real_open(l, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
        fprintf(stderr, "powercut: cannot open %s\n", l);
        abort();
    }
    ready = 1;
}

/* The absolute path of `path` opened relative to `dirfd`, or NULL. */
static char *absolute(int dirfd, const char *path) {
    char base[PATH_MAX];
    if (!path) return NULL;
    if (path[0] == '/') return strdup(path);
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return NULL;
    } else if (dirfd >= 0 && dirfd < MAX_FDS && fd_path[dirfd]) {
        snprintf(base, sizeof base, "%s", fd_path[dirfd]);
    } else {
        return NULL;
    }
    char *out = malloc(strlen(base) + strlen(path) + 2);
    if (!out) return NULL;
    sprintf(out, "%s/%s", base, path);
    return out;
}

/* Under the root, or a directory above it (whose fsync makes the root's
 * own entry durable). */
static int watched(const char *path) {
    if (!ready || !path) return 0;
    if (strncmp(path, root, root_len) == 0 &&
        (path[root_len] == '/' || path[root_len] == 0))
        return 1;
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--;
    return len < root_len && strncmp(root, path, len) == 0 &&
           (root[len] == '/' || len == 1);
}

/* Appends one record; aborts if it cannot (a lost record would make the
 * rollback lie). */
static void record(char kind, const char *path, uint64_t offset,
                   uint64_t old_size, const void *data, uint64_t len) {
    uint32_t plen = (uint32_t)strlen(path);
    size_t total = 1 + 4 + plen + 8 + 8 + 8 + len;
    char *buf = malloc(total), *p = buf;
    if (!buf) abort();
    *p++ = kind;
    memcpy(p, &plen, 4); p += 4;
    memcpy(p, path, plen); p += plen;
    memcpy(p, &offset, 8); p += 8;
    memcpy(p, &old_size, 8); p += 8;
    memcpy(p, &len, 8); p += 8;
    if (len) memcpy(p, data, len);
    size_t done = 0;
    while (done < total) {
        ssize_t n = real_write(log_fd, buf + done, total - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) abort();
        done += (size_t)n;
    }
    free(buf);
}

/* Records the old bytes of [offset, offset + len) of the file open as fd
 * (only those below its current size exist) and its old size. */
static void before_write(int fd, uint64_t offset, uint64_t len) {
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    uint64_t size = (uint64_t)st.st_size;
    uint64_t have = offset < size ? (size - offset < len ? size - offset : len) : 0;
    char *old = have ? malloc(have) : NULL;
    /* A descriptor opened write-only cannot be read: read through another
     * one, opened on the same file. */
    int rfd = fd, fl = real_fcntl(fd, F_GETFL);
    if (have && fl >= 0 && (fl & O_ACCMODE) == O_WRONLY) {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        rfd = real_open(proc, O_RDONLY | O_CLOEXEC);
    }
    uint64_t got = 0;
    while (rfd >= 0 && got < have) {
        ssize_t n = pread(rfd, old + got, have - got, (off_t)(offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (uint64_t)n;
    }
    if (rfd != fd && rfd >= 0) real_close(rfd);
    if (got != have) {
        fprintf(stderr, "powercut: cannot read the old bytes of %s\n", fd_path[fd]);
        abort();
    }
    record('W', fd_path[fd], offset, size, old, got);
    free(old);
}

static int tracked(int fd) {
    return ready && fd >= 0 && fd < MAX_FDS && fd_path[fd];
}

static void track(int fd, char *path) {
    if (fd >= 0 && fd < MAX_FDS) {
        free(fd_path[fd]);
        fd_path[fd] = path;
    } else {
        free(path);
    }
}

static int do_open(int dirfd, const char *path, int flags, mode_t mode,
                   int (*open_fn)(int, const char *, int, ...)) {
    char *abs = ready ? absolute(dirfd, path) : NULL;
    if (!watched(abs)) {
        free(abs);
        return open_fn(dirfd, path, flags, mode);
    }
    pthread_mutex_lock(&lock);
    struct stat st;
    int existed = stat(abs, &st) == 0;
    if (existed && (flags & O_TRUNC) && S_ISREG(st.st_mode) && st.st_size > 0 &&
        (flags & O_ACCMODE) != O_RDONLY) {
        int old = real_open(abs, O_RDONLY | O_CLOEXEC);
        if (old >= 0) {
            fd_path[old] = abs;
            before_write(old, 0, (uint64_t)st.st_size);
            fd_path[old] = NULL;
            real_close(old);
        }
    }
    if (!existed && (flags & O_CREAT)) record('C', abs, 0, 0, NULL, 0);
    int fd = open_fn(dirfd, path, flags, mode);
    if (fd >= 0) track(fd, abs); else free(abs);
    pthread_mutex_unlock(&lock);
    return fd;
}

static int at_open(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_arg(ap, mode_t);
    va_end(ap);
    return real_openat(dirfd, path, flags, mode);
}

static int at_open64(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_arg(ap, mode_t);
    va_end(ap);
    return real_openat64(dirfd, path, flags, mode);
}

static mode_t mode_of(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_of(flags, ap); va_end(ap);
    return do_open(AT_FDCWD, path, flags, m, at_open);
}
int open64(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_of(flags, ap); va_end(ap);
    return do_open(AT_FDCWD, path, flags, m, at_open64);
}
int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_of(flags, ap); va_end(ap);
    return do_open(dirfd, path, flags, m, at_open);
}
int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_of(flags, ap); va_end(ap);
    return do_open(dirfd, path, flags, m, at_open64);
}
int creat(const char *path, mode_t mode) {
    return do_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, at_open);
}

/* Where a write(2) on fd lands. */
static uint64_t write_offset(int fd) {
    int fl = real_fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_APPEND)) {
        struct stat st;
        return fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    }
    off_t at = lseek(fd, 0, SEEK_CUR);
    return at < 0 ? 0 : (uint64_t)at;
}

ssize_t write(int fd, const void *buf, size_t len) {
    if (!tracked(fd)) return real_write(fd, buf, len);
    pthread_mutex_lock(&lock);
    before_write(fd, write_offset(fd), len);
    ssize_t n = real_write(fd, buf, len);
    pthread_mutex_unlock(&lock);
    return n;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    if (!tracked(fd)) return real_writev(fd, iov, cnt);
    uint64_t len = 0;
    for (int i = 0; i < cnt; i++) len += iov[i].iov_len;
    pthread_mutex_lock(&lock);
    before_write(fd, write_offset(fd), len);
    ssize_t n = real_writev(fd, iov, cnt);
    pthread_mutex_unlock(&lock);
    return n;
}

static ssize_t do_pwrite(ssize_t (*fn)(int, const void *, size_t, off_t),
                         int fd, const void *buf, size_t len, off_t off) {
    if (!tracked(fd)) return fn(fd, buf, len, off);
    pthread_mutex_lock(&lock);
    before_write(fd, (uint64_t)off, len);
    ssize_t n = fn(fd, buf, len, off);
    pthread_mutex_unlock(&lock);
    return n;
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) {
    return do_pwrite(real_pwrite, fd, buf, len, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) {
    return do_pwrite(real_pwrite64, fd, buf, len, off);
}

static int do_truncate(int (*fn)(int, off_t), int fd, off_t size) {
    if (!tracked(fd)) return fn(fd, size);
    pthread_mutex_lock(&lock);
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size > size)
        before_write(fd, (uint64_t)size, (uint64_t)(st.st_size - size));
    else
        record('W', fd_path[fd], 0, (uint64_t)st.st_size, NULL, 0);
    int r = fn(fd, size);
    pthread_mutex_unlock(&lock);
    return r;
}

int ftruncate(int fd, off_t size) { return do_truncate(real_ftruncate, fd, size); }
int ftruncate64(int fd, off_t size) { return do_truncate(real_ftruncate64, fd, size); }

static int do_sync(int (*fn)(int), int fd) {
    int r = fn(fd);
    if (r == 0 && tracked(fd)) {
        pthread_mutex_lock(&lock);
        struct stat st;
        int dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
        record(dir ? 'D' : 'S', fd_path[fd], 0, 0, NULL, 0);
        pthread_mutex_unlock(&lock);
    }
    return r;
}

int fsync(int fd) { return do_sync(real_fsync, fd); }
int fdatasync(int fd) { return do_sync(real_fdatasync, fd); }

static int do_rename(int olddir, const char *old, int newdir, const char *new) {
    char *a = ready ? absolute(olddir, old) : NULL;
    char *b = ready ? absolute(newdir, new) : NULL;
    int r;
    if (watched(a) || watched(b)) {
        pthread_mutex_lock(&lock);
        record('R', a ? a : "", 0, 0, b ? b : "", b ? strlen(b) : 0);
        r = real_renameat(olddir, old, newdir, new);
        pthread_mutex_unlock(&lock);
    } else {
        r = real_renameat(olddir, old, newdir, new);
    }
    free(a);
    free(b);
    return r;
}

int rename(const char *old, const char *new) {
    return do_rename(AT_FDCWD, old, AT_FDCWD, new);
}
int renameat(int od, const char *old, int nd, const char *new) {
    return do_rename(od, old, nd, new);
}

static int do_unlink(int dirfd, const char *path, int flags) {
    char *abs = ready ? absolute(dirfd, path) : NULL;
    int r;
    if (watched(abs)) {
        pthread_mutex_lock(&lock);
        record('U', abs, 0, 0, NULL, 0);
        r = real_unlinkat(dirfd, path, flags);
        pthread_mutex_unlock(&lock);
    } else {
        r = real_unlinkat(dirfd, path, flags);
    }
    free(abs);
    return r;
}

int unlink(const char *path) { return do_unlink(AT_FDCWD, path, 0); }
int unlinkat(int dirfd, const char *path, int flags) {
    return do_unlink(dirfd, path, flags);
}
int rmdir(const char *path) { return do_unlink(AT_FDCWD, path, AT_REMOVEDIR); }

static int do_mkdir(int dirfd, const char *path, mode_t mode) {
    char *abs = ready ? absolute(dirfd, path) : NULL;
    int r;
    if (watched(abs)) {
        pthread_mutex_lock(&lock);
        r = real_mkdirat(dirfd, path, mode);
        if (r == 0) record('C', abs, 0, 0, NULL, 0);
        pthread_mutex_unlock(&lock);
    } else {
        r = real_mkdirat(dirfd, path, mode);
    }
    free(abs);
    return r;
}

int mkdir(const char *path, mode_t mode) { return do_mkdir(AT_FDCWD, path, mode); }
int mkdirat(int dirfd, const char *path, mode_t mode) {
    return do_mkdir(dirfd, path, mode);
}

int close(int fd) {
    if (ready && fd >= 0 && fd < MAX_FDS && fd_path[fd]) {
        pthread_mutex_lock(&lock);
        free(fd_path[fd]);
        fd_path[fd] = NULL;
        int r = real_close(fd);
        pthread_mutex_unlock(&lock);
        return r;
    }
    return real_close(fd);
}

static int copied(int from, int to) {
    if (to >= 0 && ready && from >= 0 && from < MAX_FDS) {
        pthread_mutex_lock(&lock);
        track(to, fd_path[from] ? strdup(fd_path[from]) : NULL);
        pthread_mutex_unlock(&lock);
    }
    return to;
}

int dup(int fd) { return copied(fd, real_dup(fd)); }
int dup2(int fd, int to) { return copied(fd, real_dup2(fd, to)); }
int dup3(int fd, int to, int flags) { return copied(fd, real_dup3(fd, to, flags)); }

int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    int r = real_fcntl(fd, cmd, arg);
    if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) copied(fd, r);
    return r;
}
