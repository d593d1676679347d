# Named records (collections.namedtuple / typing.NamedTuple classes) made from
# C: a record is a tuple with the tuple's own layout, allocated by its class
# and filled in place, as tuple.__new__(cls, items) does without its copy of
# the items.

from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM

cdef extern from *:
    """
    static PyObject *tg_alloc_record(PyObject *type, Py_ssize_t n) {
        return ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, n);
    }
    """
    # A record of type (a tuple subclass without instance fields of its own)
    # with n items, all NULL until record_set fills them.
    object tg_alloc_record(object type, Py_ssize_t n)


cdef inline void record_set(object record, Py_ssize_t i, object value) noexcept:
    Py_INCREF(value)  # PyTuple_SET_ITEM takes the reference
    PyTuple_SET_ITEM(record, i, value)
