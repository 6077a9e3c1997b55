/* ReaderCore, a ring reader's hot state, and Pin, the buffer a zero-copy value's
 * arrays point into (raycg.transports._native; see _native.c). */
#include "_native.h"

/* ---- ReaderCore ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *ctrl_keep, *data_keep;
    PyObject *pinned;   /* the reader's dict of live zero-copy values */
    PyObject *unpinned; /* the reader's deque of dropped ones not yet applied */
    char *ctrl, *data;
    uint64_t nslots, slots_off, released_off, next, gen, data_bytes;
    int64_t spin_ns, pure_ns;
    int spun; /* the last try_read spun and found nothing: the Python path goes to sleep */
} ReaderCore;

static inline int reader_ready(ReaderCore *r) {
    const char *ctrl = ctrl_of(&r->ctrl);
    return load_u64(ctrl, WRITE_SEQ) > r->next || load_u32(ctrl, CLOSED);
}

static int reader_ready_fn(void *r) { return reader_ready((ReaderCore *)r); }

/* Spin until value ``next`` is published or the channel closes; past spin_ns, keep on
 * while the writer is copying that very value (spin_until, in _native.c). */
static int reader_spin(ReaderCore *r) {
    return spin_until(reader_ready_fn, r, ctrl_of(&r->ctrl), r->spin_ns, r->pure_ns, r->next + 1);
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
static PyObject *reader_try_read(ReaderCore *self) {
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
    /* A record that points outside the mapping is corrupt: never read through it (the
     * Python path checks the record in full and raises ChannelBroken). Overflow-free:
     * offset <= size first, then length <= what is left. */
    if (rec[5] > self->data_bytes || rec[6] > self->data_bytes - rec[5]) return Py_NewRef(MISS);
    /* The memoryview below has no exporter, and unpickling runs Python code (__reduce__
     * hooks, finalizers at any allocation) that may release the GIL: a close() from
     * another thread would then detach us and unmap the region under the unpickler.
     * Our own reference to the mapping's exporter keeps it mapped until we are done;
     * nothing between the NULL check above and this line can run Python code. */
    PyObject *keep = Py_NewRef(self->data_keep);
    PyObject *mv = PyMemoryView_FromMemory(self->data + rec[5], (Py_ssize_t)rec[6], PyBUF_READ);
    PyObject *value = mv == NULL ? NULL : PyObject_CallOneArg(pickle_loads, mv);
    Py_XDECREF(mv);
    Py_DECREF(keep); /* after mv: the memoryview must never outlive the mapping */
    if (mv == NULL) return NULL;
    /* A value that fails to unpickle is consumed all the same. */
    self->next += 1;
    reader_release(self, self->next);
    return value;
}

/* The two calls below spin without the GIL (and try_read unpickles): each holds the
 * control mapping's exporter throughout, as the data's is held across pickle.loads. */
static PyObject *ReaderCore_try_read(ReaderCore *self, PyObject *unused) {
    PyObject *keep = Py_NewRef(self->ctrl_keep);
    PyObject *value = reader_try_read(self);
    Py_DECREF(keep);
    return value;
}

static PyObject *ReaderCore_spin(ReaderCore *self, PyObject *unused) {
    PyObject *keep = Py_NewRef(self->ctrl_keep);
    int ready = reader_ready(self) || reader_spin(self);
    Py_DECREF(keep);
    return PyBool_FromLong(ready);
}

/* set_ctrl(keep, addr): swap_ctrl (_native.h). */
static PyObject *ReaderCore_set_ctrl(ReaderCore *self, PyObject *args) {
    return swap_ctrl(&self->ctrl_keep, &self->ctrl, args);
}

/* set_data(keep, addr, gen, size_bytes): the generation try_read decodes from, and the
 * size of its mapping (no slot record may point past it). */
static PyObject *ReaderCore_set_data(ReaderCore *self, PyObject *args) {
    PyObject *keep;
    unsigned long long addr, gen, size_bytes;
    if (!PyArg_ParseTuple(args, "OKKK", &keep, &addr, &gen, &size_bytes)) return NULL;
    Py_XSETREF(self->data_keep, Py_NewRef(keep));
    self->data = (char *)(uintptr_t)addr;
    self->gen = gen;
    self->data_bytes = size_bytes;
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
    self->data_bytes = 0;
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
    {"set_ctrl", (PyCFunction)ReaderCore_set_ctrl, METH_VARARGS, NULL},
    {"release", (PyCFunction)ReaderCore_release, METH_O, NULL},
    {"detach", (PyCFunction)ReaderCore_detach, METH_NOARGS, NULL},
    {NULL}};

static PyGetSetDef ReaderCore_getset[] = {
    {"next", (getter)ReaderCore_get_next, (setter)ReaderCore_set_next, "the seq the next read returns",
     NULL},
    {"spun", (getter)ReaderCore_get_spun, NULL, "the last try_read spun in vain", NULL},
    {NULL}};

PyTypeObject ReaderCoreType = {
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

/* Pin(keep, addr, nbytes, seq, callback, writable=False): a buffer over shared memory,
 * read-only unless ``writable`` (the tensors of a ring with one reader, whose writes
 * into its own value's region reach nobody: _tensor_cow.py). It keeps ``keep`` (the
 * mapping's exporter) alive, and when the last view of it dies it calls
 * callback(seq): that is how a zero-copy value unpins its slot. */
typedef struct {
    PyObject_HEAD
    PyObject *keep, *callback;
    char *addr;
    Py_ssize_t nbytes;
    unsigned long long seq;
    int readonly;
} Pin;

static PyObject *Pin_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *keep, *callback;
    unsigned long long addr, seq;
    Py_ssize_t nbytes;
    int writable = 0;
    if (!PyArg_ParseTuple(args, "OKnKO|p", &keep, &addr, &nbytes, &seq, &callback, &writable)) return NULL;
    Pin *self = (Pin *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->keep = Py_NewRef(keep);
    self->callback = Py_NewRef(callback);
    self->addr = (char *)(uintptr_t)addr;
    self->nbytes = nbytes;
    self->seq = seq;
    self->readonly = !writable;
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
    return PyBuffer_FillInfo(view, (PyObject *)self, self->addr, self->nbytes, self->readonly, flags);
}

static PyBufferProcs Pin_as_buffer = {(getbufferproc)Pin_getbuffer, NULL};

PyTypeObject PinType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "raycg.transports._native.Pin",
    .tp_basicsize = sizeof(Pin),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Pin_new,
    .tp_dealloc = (destructor)Pin_dealloc,
    .tp_as_buffer = &Pin_as_buffer,
};
