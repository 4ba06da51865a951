/*
 * power_cut.c: an LD_PRELOAD layer that keeps, beside a directory, what a
 * power cut would leave of it.
 *
 * A process started with LD_PRELOAD=power_cut.so, POWER_CUT_DIR=<dir> and
 * POWER_CUT_DURABLE=<copy> works on <dir> as usual; each time it calls fsync
 * or fdatasync on a file under <dir>, the file's contents as of that call are
 * copied to the same path under <copy> (an fsync of a directory creates it
 * there). Anything written and never synced, including sled's
 * sync_file_range "flushes", never reaches <copy>. After SIGKILL, <copy> is
 * the directory as a power cut that drops every unsynced write leaves it;
 * starting the program on <copy> shows what survives.
 *
 * Renames and unlinks under <dir> are applied to <copy> at once (as if the
 * directory were synced right after them): the model is strict about file
 * contents, lenient about directory entries. Both paths must be canonical
 * (what /proc/self/fd shows). Built by the tests at run time with `cc`
 * (tests/src/power_cut.rs); the Rust code of lgsp forbids unsafe code, so the
 * shim is C.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* libc's rename, not this layer's. */
static int real_rename(const char *from, const char *to) {
    static int (*real)(const char *, const char *);
    if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    return real(from, to);
}

/* The path under POWER_CUT_DURABLE that mirrors `path`; 0 when `path` is not
 * under POWER_CUT_DIR (or the layer is not configured). */
static int durable_path(const char *path, char *out, size_t len) {
    const char *dir = getenv("POWER_CUT_DIR");
    const char *copy = getenv("POWER_CUT_DURABLE");
    if (!dir || !copy || !*dir) return 0;
    size_t n = strlen(dir);
    if (strncmp(path, dir, n) != 0) return 0;
    if (path[n] != '\0' && path[n] != '/') return 0;
    return snprintf(out, len, "%s%s", copy, path + n) < (int)len;
}

/* `path` made absolute against the working directory (not canonical). */
static void absolute(const char *path, char *out, size_t len) {
    char cwd[PATH_MAX / 2];
    if (path[0] == '/' || !getcwd(cwd, sizeof cwd)) {
        snprintf(out, len, "%s", path);
    } else {
        snprintf(out, len, "%s/%s", cwd, path);
    }
}

static void mkdirs(const char *path) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s", path);
    for (char *c = p + 1; *c; c++) {
        if (*c == '/') {
            *c = '\0';
            mkdir(p, 0755);
            *c = '/';
        }
    }
    mkdir(p, 0755);
}

/* Copies what `fd` holds now to its durable path. */
static void keep(int fd) {
    char link[64], path[PATH_MAX], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return;
    path[n] = '\0';
    if (!durable_path(path, target, sizeof target)) return;
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    int saved = errno;
    pthread_mutex_lock(&lock);
    if (S_ISDIR(st.st_mode)) {
        mkdirs(target);
    } else if (S_ISREG(st.st_mode)) {
        char parent[PATH_MAX], tmp[PATH_MAX + 16];
        snprintf(parent, sizeof parent, "%s", target);
        char *slash = strrchr(parent, '/');
        if (slash) {
            *slash = '\0';
            mkdirs(parent);
        }
        snprintf(tmp, sizeof tmp, "%s.power-cut", target);
        /* The fd may be write-only: read the file through /proc. */
        int src = open(link, O_RDONLY);
        int dst = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (src >= 0 && dst >= 0) {
            static char buf[1 << 20];
            ssize_t got;
            while ((got = read(src, buf, sizeof buf)) > 0) {
                for (ssize_t off = 0; off < got;) {
                    ssize_t w = write(dst, buf + off, got - off);
                    if (w <= 0) break;
                    off += w;
                }
            }
            real_rename(tmp, target);
        }
        if (src >= 0) close(src);
        if (dst >= 0) close(dst);
    }
    pthread_mutex_unlock(&lock);
    errno = saved;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    keep(fd);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    keep(fd);
    return real(fd);
}

int rename(const char *from, const char *to) {
    char a[PATH_MAX], b[PATH_MAX], da[PATH_MAX], db[PATH_MAX];
    absolute(from, a, sizeof a);
    absolute(to, b, sizeof b);
    int r = real_rename(from, to);
    if (r == 0 && durable_path(a, da, sizeof da) && durable_path(b, db, sizeof db)) {
        int saved = errno;
        pthread_mutex_lock(&lock);
        real_rename(da, db);
        pthread_mutex_unlock(&lock);
        errno = saved;
    }
    return r;
}

int unlink(const char *path) {
    static int (*real)(const char *);
    if (!real) real = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
    char a[PATH_MAX], da[PATH_MAX];
    absolute(path, a, sizeof a);
    int r = real(path);
    if (r == 0 && durable_path(a, da, sizeof da)) {
        int saved = errno;
        pthread_mutex_lock(&lock);
        real(da);
        pthread_mutex_unlock(&lock);
        errno = saved;
    }
    return r;
}
