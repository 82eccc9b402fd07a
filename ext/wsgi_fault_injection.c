/* wsgi_fault_injection.c - the private yimmo._yimmo._fault_injection()
 * that tests use to drive the allocation fault injector (alloc.h), and
 * YIMMO_FAULT_ALLOC for servers in a subprocess. Only in builds with
 * YMO_FAULT_INJECTION: elsewhere the function does not exist, which is how
 * a test knows to skip. GIL held throughout.                            */
#include "wsgi.h"

#ifdef YMO_FAULT_INJECTION

#include "alloc.h"

static PyObject *
site_info(size_t i, const ymo_alloc_site_t *s)
{
    const char *slash = strrchr(s->file, '/');
    return Py_BuildValue(
        "{s:n,s:s,s:s,s:i,s:s,s:s,s:k,s:k}", "id", (Py_ssize_t)i, "file",
        slash != NULL ? slash + 1 : s->file, "where",
        s->file, "line", s->line, "func", s->func, "what", s->what,
        "reached", (unsigned long)atomic_load(&s->reached), "failed",
        (unsigned long)atomic_load(&s->failed));
}

static PyObject *
list_sites(void)
{
    size_t n;
    ymo_alloc_site_t *const *sites = ymo_fi_sites(&n);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *d = site_info(i, sites[i]);
        if (d == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, d);
    }
    return list;
}

static PyObject *
fault_injection(PyObject *module, PyObject *args)
{
    (void)module;
    const char *op;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs < 1 || !PyArg_Parse(PyTuple_GET_ITEM(args, 0), "s", &op)) {
        goto usage;
    }
    PyObject *rest = PyTuple_GetSlice(args, 1, nargs);
    if (rest == NULL) {
        return NULL;
    }
    PyObject *r = NULL;
    if (strcmp(op, "sites") == 0 && nargs == 1) {
        r = list_sites();
    }
    else if (strcmp(op, "reset") == 0 && nargs == 1) {
        ymo_fi_reset();
        r = Py_NewRef(Py_None);
    }
    else if (strcmp(op, "totals") == 0 && nargs == 1) {
        unsigned long checks, failures;
        ymo_fi_totals(&checks, &failures);
        r = Py_BuildValue("(kk)", checks, failures);
    }
    else if (strcmp(op, "nth") == 0) {
        unsigned long nth;
        if (PyArg_ParseTuple(rest, "k:nth", &nth)) {
            ymo_fi_arm_nth(nth);
            r = Py_NewRef(Py_None);
        }
    }
    else if (strcmp(op, "site") == 0) {
        Py_ssize_t id;
        unsigned long k = 1, count = 1;
        if (PyArg_ParseTuple(rest, "n|kk:site", &id, &k, &count)) {
            size_t n;
            ymo_alloc_site_t *const *sites = ymo_fi_sites(&n);
            if (id < 0 || (size_t)id >= n) {
                PyErr_Format(PyExc_IndexError, "no site %zd", id);
            }
            else {
                ymo_fi_arm_site(sites[id], k, count);
                r = Py_NewRef(Py_None);
            }
        }
    }
    else if (strcmp(op, "random") == 0) {
        double p;
        unsigned long long seed = 0;
        if (PyArg_ParseTuple(rest, "d|K:random", &p, &seed)) {
            ymo_fi_arm_random(p, seed);
            r = Py_NewRef(Py_None);
        }
    }
    else if (strcmp(op, "configure") == 0) {
        const char *spec;
        if (PyArg_ParseTuple(rest, "s:configure", &spec)) {
            if (ymo_fi_configure(spec) < 0) {
                PyErr_Format(PyExc_ValueError, "bad fault spec %s", spec);
            }
            else {
                r = Py_NewRef(Py_None);
            }
        }
    }
    else {
        Py_DECREF(rest);
        goto usage;
    }
    Py_DECREF(rest);
    return r;
usage:
    PyErr_SetString(PyExc_TypeError,
                    "_fault_injection('sites' | 'reset' | 'totals' | "
                    "'nth', n | 'site', id[, k[, count]] | "
                    "'random', p[, seed] | 'configure', spec)");
    return NULL;
}

PyMethodDef ymo_fault_injection_methods[] = {
    {"_fault_injection", fault_injection, METH_VARARGS,
     "Drive the allocation fault injector (fault-injection builds only)."},
    {NULL, NULL, 0, NULL},
};

int
ymo_fault_injection_init(void)
{
    const char *spec = getenv("YIMMO_FAULT_ALLOC");
    if (spec != NULL && spec[0] != '\0' && ymo_fi_configure(spec) < 0) {
        PyErr_Format(PyExc_ValueError, "YIMMO_FAULT_ALLOC: bad spec %s",
                     spec);
        return -1;
    }
    return 0;
}

#else

/* ISO C wants a translation unit to declare something. */
typedef int ymo_fault_injection_unused_t;

#endif /* YMO_FAULT_INJECTION */
