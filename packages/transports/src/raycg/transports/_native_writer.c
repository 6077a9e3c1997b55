/* WriterCore: a ring writer's hot state (raycg.transports._native; see _native.c). */
#include "_native.h"

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
    int64_t spin_ns, pure_ns;
    uint64_t want;       /* what spin() waits for: every reader released below it */
    /* Shrinking (see _shm_writer.py): while the slots are grown, shrink_bytes is the
     * original slot size (else 0), and small_run counts the consecutive values that
     * would fit it; the value that would make it shrink_after goes to the Python path,
     * which moves to a generation of the original size. */
    uint64_t shrink_bytes, small_run, shrink_after;
} WriterCore;

static uint64_t writer_min_released(WriterCore *w) {
    uint64_t m = UINT64_MAX;
    const char *ctrl = ctrl_of(&w->ctrl);
    for (uint64_t r = 0; r < w->nreaders; r++) {
        uint64_t v = load_u64(ctrl, READERS + LINE * r + R_RELEASED);
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
    long long spin_ns, pure_ns;
    if (!PyArg_ParseTuple(args, "OKKKKLL", &keep, &addr, &nslots, &nreaders, &seq, &spin_ns, &pure_ns))
        return -1;
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
    self->spin_ns = spin_ns;
    self->pure_ns = pure_ns;
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
    if (w->shrink_bytes) {
        if (len > w->shrink_bytes)
            w->small_run = 0;
        else if (w->small_run + 1 >= w->shrink_after)
            return 0; /* the Python path counts this one and shrinks */
        else
            w->small_run += 1;
    }
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
static PyObject *writer_try_write(WriterCore *self, PyObject *value) {
    PyTypeObject *t = Py_TYPE(value);
    if (!self->fast || load_u32(self->ctrl, CLOSED)) Py_RETURN_FALSE;
    if (!(value == Py_None || t == &PyLong_Type || t == &PyUnicode_Type || t == &PyFloat_Type ||
          t == &PyBool_Type || t == &PyBytes_Type))
        Py_RETURN_FALSE;
    if (!writer_has_room(self)) Py_RETURN_FALSE; /* the Python path waits */
    PyObject *call_args[2] = {value, protocol5};
    PyObject *meta = PyObject_Vectorcall(pickle_dumps, call_args, 2, NULL);
    if (meta == NULL) return NULL;
    /* Pickling allocates, and an allocation may run finalizers that release the GIL: a
     * close() from another thread may have detached us (data unmapped) meanwhile.
     * From here to the publish nothing runs Python code. */
    int done = self->fast && self->data != NULL && writer_put_meta(self, meta);
    Py_DECREF(meta);
    return PyBool_FromLong(done);
}

/* Pickling runs Python code, which may let the GIL go: the call holds the control
 * mapping's exporter throughout (see ctrl_of in _native.h). */
static PyObject *WriterCore_try_write(WriterCore *self, PyObject *value) {
    PyObject *keep = Py_NewRef(self->ctrl_keep);
    PyObject *done = writer_try_write(self, value);
    Py_DECREF(keep);
    return done;
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

static int writer_space_ready(void *arg) {
    WriterCore *w = arg;
    return writer_min_released(w) >= w->want || load_u32(ctrl_of(&w->ctrl), CLOSED);
}

/* spin(need) -> bool: spin until every reader released every value below ``need`` (or
 * the channel closes); False if it did not happen within the spin. */
static PyObject *WriterCore_spin(WriterCore *self, PyObject *arg) {
    unsigned long long need = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    self->want = need;
    PyObject *keep = Py_NewRef(self->ctrl_keep); /* the spin lets the GIL go */
    int ready = spin_until(writer_space_ready, self, ctrl_of(&self->ctrl), self->spin_ns, self->pure_ns, 0);
    Py_DECREF(keep);
    return PyBool_FromLong(ready);
}

/* set_ctrl(keep, addr): swap_ctrl (_native.h). */
static PyObject *WriterCore_set_ctrl(WriterCore *self, PyObject *args) {
    return swap_ctrl(&self->ctrl_keep, &self->ctrl, args);
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
static PyObject *WriterCore_get_small_run(WriterCore *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->small_run);
}
static int WriterCore_set_small_run(WriterCore *self, PyObject *v, void *c) {
    unsigned long long n = v == NULL ? 0 : PyLong_AsUnsignedLongLong(v);
    if (PyErr_Occurred()) return -1;
    self->small_run = n;
    return 0;
}

/* set_shrink(shrink_bytes, shrink_after): see the struct; shrink_bytes 0 turns it off. */
static PyObject *WriterCore_set_shrink(WriterCore *self, PyObject *args) {
    unsigned long long shrink_bytes, shrink_after;
    if (!PyArg_ParseTuple(args, "KK", &shrink_bytes, &shrink_after)) return NULL;
    self->shrink_bytes = shrink_after ? shrink_bytes : 0;
    self->shrink_after = shrink_after;
    self->small_run = 0;
    Py_RETURN_NONE;
}
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
    {"set_ctrl", (PyCFunction)WriterCore_set_ctrl, METH_VARARGS, NULL},
    {"pick_region", (PyCFunction)WriterCore_pick_region, METH_NOARGS, NULL},
    {"publish", (PyCFunction)WriterCore_publish, METH_NOARGS, NULL},
    {"spin", (PyCFunction)WriterCore_spin, METH_O, NULL},
    {"note_region", (PyCFunction)WriterCore_note_region, METH_VARARGS, NULL},
    {"min_released_now", (PyCFunction)WriterCore_min_released_now, METH_NOARGS, NULL},
    {"detach", (PyCFunction)WriterCore_detach, METH_NOARGS, NULL},
    {"set_shrink", (PyCFunction)WriterCore_set_shrink, METH_VARARGS, NULL},
    {NULL}};

static PyGetSetDef WriterCore_getset[] = {
    {"seq", (getter)WriterCore_get_seq, NULL, "values published so far", NULL},
    {"min_released", (getter)WriterCore_get_min_released, NULL, "last seen min released_seq", NULL},
    {"fast", (getter)WriterCore_get_fast, (setter)WriterCore_set_fast, "fast path allowed", NULL},
    {"small_run", (getter)WriterCore_get_small_run, (setter)WriterCore_set_small_run,
     "consecutive values that fit the original slot size", NULL},
    {NULL}};

PyTypeObject WriterCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "raycg.transports._native.WriterCore",
    .tp_basicsize = sizeof(WriterCore),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)WriterCore_init,
    .tp_dealloc = (destructor)WriterCore_dealloc,
    .tp_methods = WriterCore_methods,
    .tp_getset = WriterCore_getset,
};
