/* raycg.transports._native: the shared-memory ring's hot path, in C.
 *
 * Why hand-written: no maintained library offers a seqlock-style ring over futexes on
 * arbitrary shared memory, and in pure Python each write or read of a small value cost
 * about 1 us of interpreter work, against about 0.3 us for a whole hop of the raw
 * shared-memory floor (docs/benchmarks.md). This module does only what sits on every
 * call; everything else (waiting past the spin, growing slots, out-of-band buffers,
 * pins, errors) stays in Python, in _shm_writer.py and _shm_reader.py, which fall back
 * to their own slow paths whenever the fast path here says it cannot help.
 *
 * The layout and the protocol are those drawn in _shm_ring.py; LAYOUT below is checked
 * against it at import, so a stale build fails loudly instead of misreading memory.
 *
 * Contents:
 *   fence(), futex_wait(), futex_wake(), spin_pause()   primitives
 *   WriterCore   a writer's hot state: publishes plain values, picks data regions
 *   ReaderCore   a reader's hot state: spins for and decodes plain values
 *   Pin          a read-only buffer over a slot that calls back when it dies
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define CPU_RELAX() ((void)0)
#endif

#if PY_VERSION_HEX >= 0x030D0000
#define IS_FINALIZING() Py_IsFinalizing()
#else
#define IS_FINALIZING() _Py_IsFinalizing()
#endif

/* Byte offsets of the control segment (drawn in _shm_ring.py). */
#define WRITE_SEQ 64
#define DATA_FUTEX 72
#define WRITER_WAITING 88
#define WRITING 96
#define CLOSED 128
#define SPACE_FUTEX 132
#define READERS 256
#define LINE 64
#define R_RELEASED 0
#define R_WAITING 12
#define SLOT_WORDS 8

/* How long a reader keeps spinning while the writer copies the value it waits for
 * (the WRITING word): long enough for hundreds of MiB, short enough that a writer
 * killed mid-copy costs one bounded spin before the futex sleep takes over. */
#define WRITING_SPIN_MAX_NS 20000000LL

static PyObject *pickle_dumps, *pickle_loads, *protocol5;

static inline uint64_t load_u64(const char *base, uint64_t off) {
    return __atomic_load_n((const uint64_t *)(base + off), __ATOMIC_ACQUIRE);
}
static inline uint32_t load_u32(const char *base, uint64_t off) {
    return __atomic_load_n((const uint32_t *)(base + off), __ATOMIC_ACQUIRE);
}
static inline void store_u64(char *base, uint64_t off, uint64_t v) {
    __atomic_store_n((uint64_t *)(base + off), v, __ATOMIC_RELEASE);
}
static inline void full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long sys_futex_wake(void *addr, int count) {
    return syscall(SYS_futex, addr, FUTEX_WAKE, count, NULL, NULL, 0);
}

/* Bump the futex word at ``off`` and wake every sleeper on it. The word changes only
 * for a sleeper: one that reads it, says it waits, then sleeps cannot miss this. */
static void bump_and_wake(char *ctrl, uint64_t off) {
    uint32_t *word = (uint32_t *)(ctrl + off);
    __atomic_store_n(word, __atomic_load_n(word, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
    sys_futex_wake(word, INT32_MAX);
}

/* ---- primitives ------------------------------------------------------------------ */

static PyObject *py_fence(PyObject *mod, PyObject *unused) {
    full_fence();
    Py_RETURN_NONE;
}

static PyObject *py_futex_wait(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long long addr;
    unsigned long expected;
    double timeout_s;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "futex_wait(addr, expected, timeout_s) takes 3 arguments");
        return NULL;
    }
    addr = PyLong_AsUnsignedLongLong(args[0]);
    expected = PyLong_AsUnsignedLongMask(args[1]);
    timeout_s = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (!(timeout_s > 0)) Py_RETURN_NONE;
    if (timeout_s > 3600.0) timeout_s = 3600.0; /* the caller re-checks and sleeps again */
    struct timespec ts = {(time_t)timeout_s, (long)((timeout_s - (double)(time_t)timeout_s) * 1e9)};
    long r;
    int err;
    Py_BEGIN_ALLOW_THREADS
    r = syscall(SYS_futex, (void *)(uintptr_t)addr, FUTEX_WAIT, (uint32_t)expected, &ts, NULL, 0);
    err = errno;
    Py_END_ALLOW_THREADS
    if (r == -1 && err != EAGAIN && err != ETIMEDOUT && err != EINTR) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *py_futex_wake(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "futex_wake(addr, count=all) takes 1 or 2 arguments");
        return NULL;
    }
    unsigned long long addr = PyLong_AsUnsignedLongLong(args[0]);
    long count = nargs > 1 ? PyLong_AsLong(args[1]) : INT32_MAX;
    if (PyErr_Occurred()) return NULL;
    long r = sys_futex_wake((void *)(uintptr_t)addr, (int)count);
    if (r == -1) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(r);
}

/* ---- WriterCore ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *ctrl_keep; /* exporter of the control mapping: keeps it mapped */
    PyObject *data_keep; /* exporter of the current data generation's mapping */
    char *ctrl, *data;
    uint64_t nslots, nreaders, slots_off;
    uint64_t seq, min_released;
    uint64_t gen, data_pid, data_fd, slot_bytes;
    int64_t *region_seq; /* per data region: the last seq written there, -1 for none */
    uint64_t pending_region; /* where the value being written goes (recorded at publish) */
    int fast;            /* 0: every write takes the Python path (old generations, faults) */
} WriterCore;

static uint64_t writer_min_released(WriterCore *w) {
    uint64_t m = UINT64_MAX;
    for (uint64_t r = 0; r < w->nreaders; r++) {
        uint64_t v = load_u64(w->ctrl, READERS + LINE * r + R_RELEASED);
        if (v < m) m = v;
    }
    return m;
}

/* The free data region written most recently (its lines are likeliest still in cache).
 * A region is free once every reader released the value last written there. After the
 * space check (seq - nslots < min_released) at most nslots - 1 values are unreleased,
 * so one region is always free; the stale min_released we may use is never too high. */
static uint64_t writer_pick_region(WriterCore *w) {
    int64_t best_seq = -2, released = (int64_t)w->min_released;
    uint64_t best = 0;
    for (uint64_t r = 0; r < w->nslots; r++) {
        int64_t s = w->region_seq[r];
        if (s < released && s > best_seq) {
            best = r;
            best_seq = s;
        }
    }
    w->pending_region = best;
    return best;
}

static void writer_publish(WriterCore *w) {
    w->region_seq[w->pending_region] = (int64_t)w->seq;
    w->seq += 1;
    store_u64(w->ctrl, WRITE_SEQ, w->seq);
    full_fence(); /* Dekker: our write_seq store before our loads of the waiting flags */
    for (uint64_t r = 0; r < w->nreaders; r++) {
        if (load_u32(w->ctrl, READERS + LINE * r + R_WAITING)) {
            bump_and_wake(w->ctrl, DATA_FUTEX);
            break;
        }
    }
}

static int WriterCore_init(WriterCore *self, PyObject *args, PyObject *kwds) {
    PyObject *keep;
    unsigned long long addr, nslots, nreaders, seq;
    if (!PyArg_ParseTuple(args, "OKKKK", &keep, &addr, &nslots, &nreaders, &seq)) return -1;
    if (nslots < 1 || nreaders < 1) {
        PyErr_SetString(PyExc_ValueError, "nslots and nreaders must be >= 1");
        return -1;
    }
    PyMem_Free(self->region_seq);
    self->region_seq = PyMem_Malloc(sizeof(int64_t) * nslots);
    if (self->region_seq == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint64_t r = 0; r < nslots; r++) self->region_seq[r] = -1;
    Py_XSETREF(self->ctrl_keep, Py_NewRef(keep));
    self->ctrl = (char *)(uintptr_t)addr;
    self->nslots = nslots;
    self->nreaders = nreaders;
    self->slots_off = READERS + LINE * nreaders;
    self->seq = seq;
    self->min_released = 0;
    self->fast = 0; /* until set_data gives us somewhere to write */
    return 0;
}

static void WriterCore_dealloc(WriterCore *self) {
    Py_XDECREF(self->ctrl_keep);
    Py_XDECREF(self->data_keep);
    PyMem_Free(self->region_seq);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* set_data(keep, addr, gen, pid, fd, slot_bytes): write from now on to this generation. */
static PyObject *WriterCore_set_data(WriterCore *self, PyObject *args) {
    PyObject *keep;
    unsigned long long addr, gen, pid, fd, slot_bytes;
    if (!PyArg_ParseTuple(args, "OKKKKK", &keep, &addr, &gen, &pid, &fd, &slot_bytes)) return NULL;
    Py_XSETREF(self->data_keep, Py_NewRef(keep));
    self->data = (char *)(uintptr_t)addr;
    self->gen = gen;
    self->data_pid = pid;
    self->data_fd = fd;
    self->slot_bytes = slot_bytes;
    for (uint64_t r = 0; r < self->nslots; r++) self->region_seq[r] = -1;
    self->pending_region = 0;
    Py_RETURN_NONE;
}

/* Whether value ``seq`` may be written now (every reader released seq - nslots). */
static int writer_has_room(WriterCore *w) {
    uint64_t seq = w->seq, nslots = w->nslots;
    if (seq + 1 <= nslots || seq - nslots + 1 <= w->min_released) return 1;
    w->min_released = writer_min_released(w);
    return seq - nslots + 1 <= w->min_released;
}

/* Copy a pickle stream with no out-of-band buffers into a region, fill the slot record
 * and publish. 0 (nothing written) if it does not fit: the Python path grows the slots. */
static int writer_put_meta(WriterCore *w, PyObject *meta) {
    uint64_t seq = w->seq, len = (uint64_t)PyBytes_GET_SIZE(meta);
    if (len > w->slot_bytes) return 0;
    uint64_t base = writer_pick_region(w) * w->slot_bytes;
    memcpy(w->data + base, PyBytes_AS_STRING(meta), len);
    uint64_t *rec = (uint64_t *)(w->ctrl + w->slots_off + LINE * (seq % w->nslots));
    rec[0] = seq;
    rec[1] = w->gen;
    rec[2] = w->data_pid;
    rec[3] = w->data_fd;
    rec[4] = w->slot_bytes;
    rec[5] = base;
    rec[6] = len;
    rec[7] = 0;
    writer_publish(w); /* its release store orders the record before write_seq */
    return 1;
}

/* try_write(value) -> bool: publish a plain value (None, bool, int, float, str, bytes)
 * if nothing stands in the way; False leaves the ring untouched for the Python path. */
static PyObject *WriterCore_try_write(WriterCore *self, PyObject *value) {
    PyTypeObject *t = Py_TYPE(value);
    if (!self->fast || load_u32(self->ctrl, CLOSED)) Py_RETURN_FALSE;
    if (!(value == Py_None || t == &PyLong_Type || t == &PyUnicode_Type || t == &PyFloat_Type ||
          t == &PyBool_Type || t == &PyBytes_Type))
        Py_RETURN_FALSE;
    if (!writer_has_room(self)) Py_RETURN_FALSE; /* the Python path waits */
    PyObject *call_args[2] = {value, protocol5};
    PyObject *meta = PyObject_Vectorcall(pickle_dumps, call_args, 2, NULL);
    if (meta == NULL) return NULL;
    int done = writer_put_meta(self, meta);
    Py_DECREF(meta);
    return PyBool_FromLong(done);
}

/* try_write_meta(meta: bytes) -> bool: the same for a value the Python side encoded
 * into a pickle stream with no out-of-band buffers (tuples, dicts, small objects). */
static PyObject *WriterCore_try_write_meta(WriterCore *self, PyObject *meta) {
    if (!PyBytes_CheckExact(meta)) {
        PyErr_SetString(PyExc_TypeError, "try_write_meta takes bytes");
        return NULL;
    }
    if (!self->fast || load_u32(self->ctrl, CLOSED) || !writer_has_room(self)) Py_RETURN_FALSE;
    return PyBool_FromLong(writer_put_meta(self, meta));
}

/* pick_region() -> int: for the Python path, with a fresh view of what readers released. */
static PyObject *WriterCore_pick_region(WriterCore *self, PyObject *unused) {
    self->min_released = writer_min_released(self);
    return PyLong_FromUnsignedLongLong(writer_pick_region(self));
}

/* note_region(region, seq): value seq (of the current generation) lies in ``region``;
 * for a writer that attaches to a ring with values already in it. */
static PyObject *WriterCore_note_region(WriterCore *self, PyObject *args) {
    unsigned long long region, seq;
    if (!PyArg_ParseTuple(args, "KK", &region, &seq)) return NULL;
    if (region >= self->nslots) {
        PyErr_SetString(PyExc_ValueError, "region out of range");
        return NULL;
    }
    if ((int64_t)seq > self->region_seq[region]) self->region_seq[region] = (int64_t)seq;
    Py_RETURN_NONE;
}

static PyObject *WriterCore_publish(WriterCore *self, PyObject *unused) {
    writer_publish(self);
    Py_RETURN_NONE;
}

static PyObject *WriterCore_min_released_now(WriterCore *self, PyObject *unused) {
    self->min_released = writer_min_released(self);
    return PyLong_FromUnsignedLongLong(self->min_released);
}

/* detach(): drop the data mapping; every later try_write says False. */
static PyObject *WriterCore_detach(WriterCore *self, PyObject *unused) {
    self->fast = 0;
    self->data = NULL;
    Py_CLEAR(self->data_keep);
    Py_RETURN_NONE;
}

static PyObject *WriterCore_get_seq(WriterCore *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->seq);
}
static PyObject *WriterCore_get_min_released(WriterCore *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->min_released);
}
static PyObject *WriterCore_get_fast(WriterCore *self, void *c) { return PyBool_FromLong(self->fast); }
static int WriterCore_set_fast(WriterCore *self, PyObject *v, void *c) {
    int on = v == NULL ? 0 : PyObject_IsTrue(v);
    if (on < 0) return -1;
    self->fast = on && self->data != NULL;
    return 0;
}

static PyMethodDef WriterCore_methods[] = {
    {"try_write", (PyCFunction)WriterCore_try_write, METH_O, NULL},
    {"try_write_meta", (PyCFunction)WriterCore_try_write_meta, METH_O, NULL},
    {"set_data", (PyCFunction)WriterCore_set_data, METH_VARARGS, NULL},
    {"pick_region", (PyCFunction)WriterCore_pick_region, METH_NOARGS, NULL},
    {"publish", (PyCFunction)WriterCore_publish, METH_NOARGS, NULL},
    {"note_region", (PyCFunction)WriterCore_note_region, METH_VARARGS, NULL},
    {"min_released_now", (PyCFunction)WriterCore_min_released_now, METH_NOARGS, NULL},
    {"detach", (PyCFunction)WriterCore_detach, METH_NOARGS, NULL},
    {NULL}};

static PyGetSetDef WriterCore_getset[] = {
    {"seq", (getter)WriterCore_get_seq, NULL, "values published so far", NULL},
    {"min_released", (getter)WriterCore_get_min_released, NULL, "last seen min released_seq", NULL},
    {"fast", (getter)WriterCore_get_fast, (setter)WriterCore_set_fast, "fast path allowed", NULL},
    {NULL}};

static PyTypeObject WriterCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "raycg.transports._native.WriterCore",
    .tp_basicsize = sizeof(WriterCore),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)WriterCore_init,
    .tp_dealloc = (destructor)WriterCore_dealloc,
    .tp_methods = WriterCore_methods,
    .tp_getset = WriterCore_getset,
};

/* ---- ReaderCore ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *ctrl_keep, *data_keep;
    PyObject *pinned;   /* the reader's dict of live zero-copy values */
    PyObject *unpinned; /* the reader's deque of dropped ones not yet applied */
    char *ctrl, *data;
    uint64_t nslots, slots_off, released_off, next, gen;
    int64_t spin_ns, pure_ns;
    int spun; /* the last try_read spun and found nothing: the Python path goes to sleep */
} ReaderCore;

static PyObject *MISS; /* try_read's "the Python path must do this read" */

static inline int reader_ready(ReaderCore *r) {
    return load_u64(r->ctrl, WRITE_SEQ) > r->next || load_u32(r->ctrl, CLOSED);
}

/* Spin until value ``next`` is published or the channel closes: for spin_ns, and
 * beyond that for as long as the writer is copying that very value (bounded). The
 * first pure_ns only poll; after that each poll yields the core, with the GIL
 * released so that the process's other threads run meanwhile. */
static int reader_spin(ReaderCore *r) {
    int64_t start = now_ns(), now = start;
    while (now - start < r->pure_ns) {
        for (int k = 0; k < 16; k++) {
            if (reader_ready(r)) return 1;
            CPU_RELAX();
        }
        now = now_ns();
    }
    int ready = 0;
    uint64_t writing = r->next + 1;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        if (reader_ready(r)) {
            ready = 1;
            break;
        }
        now = now_ns();
        if (now - start >= r->spin_ns &&
            (load_u64(r->ctrl, WRITING) != writing || now - start >= WRITING_SPIN_MAX_NS))
            break;
        sched_yield(); /* on a busy node, let the process we wait for run */
    }
    Py_END_ALLOW_THREADS
    return ready;
}

static void reader_release(ReaderCore *r, uint64_t released) {
    store_u64(r->ctrl, r->released_off, released);
    full_fence(); /* Dekker: our released store before our load of writer_waiting */
    if (load_u32(r->ctrl, WRITER_WAITING)) bump_and_wake(r->ctrl, SPACE_FUTEX);
}

static int ReaderCore_init(ReaderCore *self, PyObject *args, PyObject *kwds) {
    PyObject *keep, *pinned, *unpinned;
    unsigned long long addr, nslots, nreaders, index, next;
    long long spin_ns, pure_ns;
    if (!PyArg_ParseTuple(args, "OKKKKKO!OLL", &keep, &addr, &nslots, &nreaders, &index, &next,
                          &PyDict_Type, &pinned, &unpinned, &spin_ns, &pure_ns))
        return -1;
    if (nslots < 1 || index >= nreaders) {
        PyErr_SetString(PyExc_ValueError, "bad nslots or reader index");
        return -1;
    }
    Py_XSETREF(self->ctrl_keep, Py_NewRef(keep));
    Py_XSETREF(self->pinned, Py_NewRef(pinned));
    Py_XSETREF(self->unpinned, Py_NewRef(unpinned));
    self->ctrl = (char *)(uintptr_t)addr;
    self->nslots = nslots;
    self->slots_off = READERS + LINE * nreaders;
    self->released_off = READERS + LINE * index + R_RELEASED;
    self->next = next;
    self->gen = UINT64_MAX; /* no generation mapped yet */
    self->spin_ns = spin_ns;
    self->pure_ns = pure_ns;
    return 0;
}

static void ReaderCore_dealloc(ReaderCore *self) {
    Py_XDECREF(self->ctrl_keep);
    Py_XDECREF(self->data_keep);
    Py_XDECREF(self->pinned);
    Py_XDECREF(self->unpinned);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* try_read() -> value, or MISS for the Python path: no value within the spin (then
 * ``spun`` is set), a closed channel, a value with out-of-band buffers, a generation
 * not mapped yet, a bad slot record, or zero-copy values still held (their releases
 * go through the Python path's bookkeeping). */
static PyObject *ReaderCore_try_read(ReaderCore *self, PyObject *unused) {
    self->spun = 0;
    if (self->data == NULL || PyDict_GET_SIZE(self->pinned) || PyObject_Length(self->unpinned) != 0) {
        if (PyErr_Occurred()) return NULL;
        return Py_NewRef(MISS);
    }
    if (!reader_ready(self) && !reader_spin(self)) {
        self->spun = 1;
        return Py_NewRef(MISS);
    }
    /* The Python path raises for a closed channel. (A close from another thread while
     * we spun without the GIL also detached us: data is then NULL.) */
    if (load_u32(self->ctrl, CLOSED) || self->data == NULL) return Py_NewRef(MISS);
    const uint64_t *rec = (const uint64_t *)(self->ctrl + self->slots_off + LINE * (self->next % self->nslots));
    if (rec[0] != self->next || rec[1] != self->gen || rec[7] != 0) return Py_NewRef(MISS);
    PyObject *mv = PyMemoryView_FromMemory(self->data + rec[5], (Py_ssize_t)rec[6], PyBUF_READ);
    if (mv == NULL) return NULL;
    PyObject *value = PyObject_CallOneArg(pickle_loads, mv);
    Py_DECREF(mv);
    /* A value that fails to unpickle is consumed all the same. */
    self->next += 1;
    reader_release(self, self->next);
    return value;
}

static PyObject *ReaderCore_spin(ReaderCore *self, PyObject *unused) {
    return PyBool_FromLong(reader_ready(self) || reader_spin(self));
}

/* set_data(keep, addr, gen): the generation try_read decodes from. */
static PyObject *ReaderCore_set_data(ReaderCore *self, PyObject *args) {
    PyObject *keep;
    unsigned long long addr, gen;
    if (!PyArg_ParseTuple(args, "OKK", &keep, &addr, &gen)) return NULL;
    Py_XSETREF(self->data_keep, Py_NewRef(keep));
    self->data = (char *)(uintptr_t)addr;
    self->gen = gen;
    Py_RETURN_NONE;
}

static PyObject *ReaderCore_release(ReaderCore *self, PyObject *arg) {
    unsigned long long released = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    reader_release(self, released);
    Py_RETURN_NONE;
}

static PyObject *ReaderCore_detach(ReaderCore *self, PyObject *unused) {
    self->data = NULL;
    self->gen = UINT64_MAX;
    Py_CLEAR(self->data_keep);
    Py_RETURN_NONE;
}

static PyObject *ReaderCore_get_next(ReaderCore *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->next);
}
static int ReaderCore_set_next(ReaderCore *self, PyObject *v, void *c) {
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete next");
        return -1;
    }
    unsigned long long n = PyLong_AsUnsignedLongLong(v);
    if (PyErr_Occurred()) return -1;
    self->next = n;
    return 0;
}
static PyObject *ReaderCore_get_spun(ReaderCore *self, void *c) { return PyBool_FromLong(self->spun); }

static PyMethodDef ReaderCore_methods[] = {
    {"try_read", (PyCFunction)ReaderCore_try_read, METH_NOARGS, NULL},
    {"spin", (PyCFunction)ReaderCore_spin, METH_NOARGS, NULL},
    {"set_data", (PyCFunction)ReaderCore_set_data, METH_VARARGS, NULL},
    {"release", (PyCFunction)ReaderCore_release, METH_O, NULL},
    {"detach", (PyCFunction)ReaderCore_detach, METH_NOARGS, NULL},
    {NULL}};

static PyGetSetDef ReaderCore_getset[] = {
    {"next", (getter)ReaderCore_get_next, (setter)ReaderCore_set_next, "the seq the next read returns",
     NULL},
    {"spun", (getter)ReaderCore_get_spun, NULL, "the last try_read spun in vain", NULL},
    {NULL}};

static PyTypeObject ReaderCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "raycg.transports._native.ReaderCore",
    .tp_basicsize = sizeof(ReaderCore),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ReaderCore_init,
    .tp_dealloc = (destructor)ReaderCore_dealloc,
    .tp_methods = ReaderCore_methods,
    .tp_getset = ReaderCore_getset,
};

/* ---- Pin ------------------------------------------------------------------------- */

/* Pin(keep, addr, nbytes, seq, callback): a read-only buffer over shared memory. It
 * keeps ``keep`` (the mapping's exporter) alive, and when the last view of it dies it
 * calls callback(seq): that is how a zero-copy value unpins its slot. */
typedef struct {
    PyObject_HEAD
    PyObject *keep, *callback;
    char *addr;
    Py_ssize_t nbytes;
    unsigned long long seq;
} Pin;

static PyObject *Pin_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *keep, *callback;
    unsigned long long addr, seq;
    Py_ssize_t nbytes;
    if (!PyArg_ParseTuple(args, "OKnKO", &keep, &addr, &nbytes, &seq, &callback)) return NULL;
    Pin *self = (Pin *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->keep = Py_NewRef(keep);
    self->callback = Py_NewRef(callback);
    self->addr = (char *)(uintptr_t)addr;
    self->nbytes = nbytes;
    self->seq = seq;
    return (PyObject *)self;
}

static void Pin_dealloc(Pin *self) {
    if (self->callback != NULL && !IS_FINALIZING()) {
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb); /* we may be freed while one is raised */
        PyObject *seq = PyLong_FromUnsignedLongLong(self->seq);
        PyObject *r = seq == NULL ? NULL : PyObject_CallOneArg(self->callback, seq);
        Py_XDECREF(seq);
        if (r == NULL)
            PyErr_WriteUnraisable(self->callback);
        else
            Py_DECREF(r);
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
    Py_XDECREF(self->callback);
    Py_XDECREF(self->keep);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Pin_getbuffer(Pin *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->addr, self->nbytes, 1, flags);
}

static PyBufferProcs Pin_as_buffer = {(getbufferproc)Pin_getbuffer, NULL};

static PyTypeObject PinType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "raycg.transports._native.Pin",
    .tp_basicsize = sizeof(Pin),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Pin_new,
    .tp_dealloc = (destructor)Pin_dealloc,
    .tp_as_buffer = &Pin_as_buffer,
};

/* ---- module ---------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"fence", (PyCFunction)py_fence, METH_NOARGS, "A full memory barrier."},
    {"futex_wait", (PyCFunction)(void (*)(void))py_futex_wait, METH_FASTCALL,
     "futex_wait(addr, expected, timeout_s): sleep while the u32 at addr equals expected."},
    {"futex_wake", (PyCFunction)(void (*)(void))py_futex_wake, METH_FASTCALL,
     "futex_wake(addr, count=all) -> woken: wake sleepers on the u32 at addr."},
    {NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, module_methods};

static int add_type(PyObject *m, PyTypeObject *t, const char *name) {
    if (PyType_Ready(t) < 0) return -1;
    Py_INCREF(t);
    if (PyModule_AddObject(m, name, (PyObject *)t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    PyObject *pickle = PyImport_ImportModule("pickle");
    if (pickle == NULL) goto fail;
    pickle_dumps = PyObject_GetAttrString(pickle, "dumps");
    pickle_loads = PyObject_GetAttrString(pickle, "loads");
    Py_DECREF(pickle);
    protocol5 = PyLong_FromLong(5);
    MISS = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (!pickle_dumps || !pickle_loads || !protocol5 || !MISS) goto fail;
    if (add_type(m, &WriterCoreType, "WriterCore") < 0 || add_type(m, &ReaderCoreType, "ReaderCore") < 0 ||
        add_type(m, &PinType, "Pin") < 0)
        goto fail;
    if (PyModule_AddObject(m, "MISS", Py_NewRef(MISS)) < 0) goto fail;
    PyObject *layout = Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsKsK}", "WRITE_SEQ", (unsigned long long)WRITE_SEQ, "DATA_FUTEX",
        (unsigned long long)DATA_FUTEX, "WRITER_WAITING", (unsigned long long)WRITER_WAITING, "WRITING",
        (unsigned long long)WRITING, "CLOSED", (unsigned long long)CLOSED, "SPACE_FUTEX",
        (unsigned long long)SPACE_FUTEX, "READERS", (unsigned long long)READERS, "LINE",
        (unsigned long long)LINE, "R_RELEASED", (unsigned long long)R_RELEASED, "R_WAITING",
        (unsigned long long)R_WAITING, "SLOT_WORDS", (unsigned long long)SLOT_WORDS, "WRITING_SPIN_MAX_NS",
        (unsigned long long)WRITING_SPIN_MAX_NS);
    if (layout == NULL || PyModule_AddObject(m, "LAYOUT", layout) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
