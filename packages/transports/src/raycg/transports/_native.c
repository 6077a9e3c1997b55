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
 * Files:
 *   _native.h          the layout, ordered loads and stores, the futex wake-up
 *   _native.c          this: the spin both ends wait with; fence(), futex_wait(),
 *                      futex_wake(), bump_and_wake(); the module
 *   _native_writer.c   WriterCore: a writer's hot state; publishes values, picks regions
 *   _native_reader.c   ReaderCore: a reader's hot state; spins for and decodes values;
 *                      Pin: a read-only buffer over a slot that calls back when it dies
 */
#include "_native.h"

PyObject *pickle_dumps, *pickle_loads, *protocol5;
PyObject *MISS; /* try_read's "the Python path must do this read" */

/* ---- the spin ------------------------------------------------------------------ */

/* The first pure_ns only poll (a peer on another core answers within them); after that
 * each poll yields the core, with the GIL released, so that on a busy node the process
 * we wait for runs, and so do this process's other threads. A writer copying the value
 * a reader waits for says so (WRITING == writing): the reader spins on through the copy,
 * at most WRITING_SPIN_MAX_NS, instead of sleeping through it. */
int spin_until(ready_fn ready, void *arg, const char *ctrl, int64_t spin_ns, int64_t pure_ns,
               uint64_t writing) {
    int64_t start = now_ns(), now = start;
    while (now - start < pure_ns) {
        for (int k = 0; k < 16; k++) {
            if (ready(arg)) return 1;
            CPU_RELAX();
        }
        now = now_ns();
    }
    int done = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        if (ready(arg)) {
            done = 1;
            break;
        }
        now = now_ns();
        if (now - start >= spin_ns &&
            (writing == 0 || load_u64(ctrl, WRITING) != writing || now - start >= WRITING_SPIN_MAX_NS))
            break;
        sched_yield();
    }
    Py_END_ALLOW_THREADS
    return done;
}

/* ---- the control mapping's swap (_native.h) -------------------------------------- */

PyObject *swap_ctrl(PyObject **keep_field, char **ctrl_field, PyObject *args) {
    PyObject *keep;
    unsigned long long addr;
    if (!PyArg_ParseTuple(args, "OK", &keep, &addr)) return NULL;
    PyObject *old = *keep_field;
    *keep_field = Py_NewRef(keep);
    set_ctrl_field(ctrl_field, (char *)(uintptr_t)addr);
    Py_XDECREF(old); /* after the swap: may unmap, and run Python code */
    Py_RETURN_NONE;
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

static PyObject *py_bump_and_wake(PyObject *mod, PyObject *arg) {
    unsigned long long addr = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    bump_and_wake_word((uint32_t *)(uintptr_t)addr);
    Py_RETURN_NONE;
}

/* ---- module ---------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"fence", (PyCFunction)py_fence, METH_NOARGS, "A full memory barrier."},
    {"futex_wait", (PyCFunction)(void (*)(void))py_futex_wait, METH_FASTCALL,
     "futex_wait(addr, expected, timeout_s): sleep while the u32 at addr equals expected."},
    {"futex_wake", (PyCFunction)(void (*)(void))py_futex_wake, METH_FASTCALL,
     "futex_wake(addr, count=all) -> woken: wake sleepers on the u32 at addr."},
    {"bump_and_wake", (PyCFunction)py_bump_and_wake, METH_O,
     "bump_and_wake(addr): add 1 to the u32 at addr atomically, then wake every sleeper on it."},
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
