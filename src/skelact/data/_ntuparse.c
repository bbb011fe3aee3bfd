/* Optional C accelerator for skelact.data.ntu: parse the bytes of one well-formed NTU .skeleton file.
 *
 * parse(data) -> (num_frames, ids, frames, xyz) or None, data any contiguous buffer (bytes, uint8 array)
 *   ids     list of int, the body id of each body record in file order (B,)
 *   frames  bytearray: int64 (B,), the 0-based frame of each record
 *   xyz     bytearray: float32 (B, 25, 3), x y z of the 25 joints of each record
 * None means "not handled here": anything unusual or corrupt (a non-numeric or odd value, a wrong count,
 * missing or extra lines, a value of 64 characters or more, an id over 18 digits, a sign on a count or an
 * id, NaN, infinity, a value beyond float32). The careful Python parser then gives the result or the reason.
 *
 * Lines are the careful parser's: split at '\n', values separated by blanks (space, \t, \r, \v, \f),
 * lines without values skipped. x y z become float32(float(value)) bit for bit: the value is rounded
 * correctly to a double (exactly as float() does), then cast to float. Only the grammar float() accepts
 * (less underscores, nan and inf) is converted. The data is not NUL-terminated: reads are bounded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NUM_JOINTS 25

typedef struct { const char *p, *end; } Cursor;                 /* the data not read yet */
typedef struct { const char *p, *stop; } Line;                   /* the rest of a line */

/* Space, \t, \n, \v, \f, \r: the blanks of bytes.split(); without branches, for vector code. */
static int is_blank(unsigned char c) { return (c == ' ') | ((unsigned char)(c - '\t') < 5); }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* The number of values (runs of non-blanks) left in the line; summed in bytes, 255 at a time, so that
   the compiler makes vector code of the inner loop. */
static Py_ssize_t values_left(const Line *line)
{
    const unsigned char *p = (const unsigned char *)line->p;
    Py_ssize_t n = line->stop - line->p, count = n > 0 && !is_blank(p[0]), i = 1;
    while (i < n) {
        Py_ssize_t last = n - i > 255 ? i + 255 : n;
        unsigned char part = 0;
        for (; i < last; i++)
            part += is_blank(p[i - 1]) & !is_blank(p[i]);
        count += part;
    }
    return count;
}

/* Skip blanks to the next value of the line; returns where it starts (line->stop if there is none). */
static const char *value_start(Line *line)
{
    while (line->p < line->stop && is_blank((unsigned char)*line->p)) line->p++;
    return line->p;
}

/* The next line holding a value into *line; 0 at the end of the data. */
static int next_line(Cursor *cur, Line *line)
{
    while (cur->p < cur->end) {
        const char *nl = memchr(cur->p, '\n', (size_t)(cur->end - cur->p));
        line->p = cur->p;
        line->stop = nl ? nl : cur->end;
        cur->p = nl ? nl + 1 : cur->end;
        if (value_start(line) < line->stop) return 1;
    }
    return 0;
}

/* Whether the value just read ends at q (a blank or the line's end follows); moves the line past it. */
static int value_end(Line *line, const char *q)
{
    line->p = q;
    return q == line->stop || is_blank((unsigned char)*q);
}

/* The next value as a whole number: 1 to 18 digits (fits int64), no sign. */
static int read_whole(Line *line, long long *out)
{
    const char *s = value_start(line), *q = s;
    long long v = 0;
    for (; q < line->stop && is_digit(*q) && q - s < 18; q++) v = v * 10 + (*q - '0');
    *out = v;
    return q > s && value_end(line, q);                  /* a 19th digit is no blank: not taken */
}

/* The next value as float32(float(value)) for [+-]? digits, at most one '.', one digit at least, and an
   optional exponent [eE][+-]?digits; 0 for anything else, for NaN, infinity and beyond float32. */
static int read_float(Line *line, float *out)
{
    static const double tens[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                  1e12, 1e13, 1e14, 1e15};
    const char *s = value_start(line), *q = s, *e = line->stop;
    char text[64], *end;
    Py_ssize_t digits = 0, after_dot = 0, exp_digits = 0;
    unsigned long long m = 0;                        /* the digits as an integer (wraps beyond 19) */
    double d;
    if (q < e && (*q == '+' || *q == '-')) q++;
    for (; q < e && is_digit(*q); q++, digits++) m = m * 10 + (unsigned)(*q - '0');
    if (q < e && *q == '.')
        for (q++; q < e && is_digit(*q); q++, digits++, after_dot++) m = m * 10 + (unsigned)(*q - '0');
    if (!digits) return 0;
    if (q < e && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < e && (*q == '+' || *q == '-')) q++;
        for (; q < e && is_digit(*q); q++) exp_digits++;
        if (!exp_digits) return 0;
    }
    if (!value_end(line, q) || q - s >= (Py_ssize_t)sizeof text) return 0;
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0    /* doubles are doubles (not x87) */
    /* At most 15 digits, no exponent: m and 10^after_dot are exact doubles, so m / 10^after_dot is one
       correctly rounded operation, the value strtod() gives (Clinger's fast path). */
    if (!exp_digits && digits <= 15) {
        d = (double)m / tens[after_dot];
        *out = (float)(*s == '-' ? -d : d);
        return 1;
    }
#endif
    memcpy(text, s, (size_t)(q - s));
    text[q - s] = '\0';
    d = strtod(text, &end);                   /* correctly rounded in glibc, musl (checked by the tests) */
    if (end != text + (q - s) || !(fabs(d) <= FLT_MAX)) return 0;   /* (a locale with a decimal comma) */
    *out = (float)d;
    return 1;
}

/* A line of one value, a count. */
static int read_count(Cursor *cur, Line *line, long long *out)
{
    return next_line(cur, line) && read_whole(line, out) && values_left(line) == 0;
}

static PyObject *parse(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer view;
    Cursor cur;
    Line line;
    long long num_frames, num_bodies, joints, frame, k, id, size = 0, capacity = 64;
    long long *frames = PyMem_Malloc(capacity * sizeof *frames);
    float *xyz = PyMem_Malloc(capacity * NUM_JOINTS * 3 * sizeof *xyz), *out;
    PyObject *ids = PyList_New(0), *value, *result = NULL;
    int ok = 0, j;

    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        PyMem_Free(frames);
        PyMem_Free(xyz);
        Py_XDECREF(ids);
        return NULL;
    }
    if (!frames || !xyz || !ids) { PyErr_NoMemory(); goto done; }
    cur.p = view.buf;
    cur.end = cur.p + view.len;
    if (!read_count(&cur, &line, &num_frames)) goto done;
    for (frame = 0; frame < num_frames; frame++) {
        if (!read_count(&cur, &line, &num_bodies)) goto done;
        for (k = 0; k < num_bodies; k++) {
            if (!next_line(&cur, &line) || !read_whole(&line, &id) || values_left(&line) != 9) goto done;
            if (!read_count(&cur, &line, &joints) || joints != NUM_JOINTS) goto done;
            if (size == capacity) {
                long long *more_frames = PyMem_Realloc(frames, 2 * capacity * sizeof *frames);
                float *more_xyz = more_frames
                    ? PyMem_Realloc(xyz, 2 * capacity * NUM_JOINTS * 3 * sizeof *xyz) : NULL;
                if (more_frames) frames = more_frames;
                if (more_xyz) xyz = more_xyz;
                if (!more_frames || !more_xyz) { PyErr_NoMemory(); goto done; }
                capacity *= 2;
            }
            for (j = 0, out = xyz + size * NUM_JOINTS * 3; j < NUM_JOINTS; j++, out += 3)
                if (!next_line(&cur, &line) || !read_float(&line, out) || !read_float(&line, out + 1)
                        || !read_float(&line, out + 2) || values_left(&line) != 9)
                    goto done;
            value = PyLong_FromLongLong(id);
            if (!value || PyList_Append(ids, value) < 0) { Py_XDECREF(value); goto done; }
            Py_DECREF(value);
            frames[size++] = frame;
        }
    }
    ok = !next_line(&cur, &line);                                      /* nothing but blanks follows */
done:
    if (ok) {
        PyObject *f = PyByteArray_FromStringAndSize((const char *)frames, size * sizeof *frames);
        PyObject *x = PyByteArray_FromStringAndSize((const char *)xyz, size * NUM_JOINTS * 3 * sizeof *xyz);
        if (f && x) result = Py_BuildValue("(LOOO)", num_frames, ids, f, x);
        Py_XDECREF(f);
        Py_XDECREF(x);
    } else if (!PyErr_Occurred())
        result = Py_NewRef(Py_None);
    PyBuffer_Release(&view);
    PyMem_Free(frames);
    PyMem_Free(xyz);
    Py_XDECREF(ids);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_O, "parse(data) -> (num_frames, ids, frames int64, xyz float32) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ntuparse",
                                    "C parser for well-formed NTU .skeleton files (see skelact.data.ntu).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ntuparse(void) { return PyModule_Create(&module); }
