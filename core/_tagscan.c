/* core._tagscan: the link and image tag scan of core/markup.py in C.
 *
 * Finding the next <a>, <area>, <img> or VML tag means stepping over every other tag of the
 * message exactly as scan_tags does (quoted values may hold ">", comments and raw-text
 * elements hide what looks like tags, Outlook's conditional comments do not): in Python's
 * regular-expression engine that is most of the time instrumenting a message takes. This
 * module does the same steps; core/markup.py uses its regular expressions where the module
 * was not built, and the tests hold both to scan_tags. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static const char *const RAW_TEXT[] = {
    "script", "style", "textarea", "title", "xmp", "noembed", "noframes", NULL};

static inline int
is_blank(Py_UCS4 c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

static inline int
is_ascii_letter(Py_UCS4 c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static inline int
is_name_char(Py_UCS4 c)
{
    return is_ascii_letter(c) || (c >= '0' && c <= '9') || c == ':' || c == '_' || c == '.' ||
           c == '-';
}

static inline Py_UCS4
ascii_lower(Py_UCS4 c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* Whether c matches the lower-case ASCII letter under re.IGNORECASE, whose case folding also
 * lets U+0130 and U+0131 match "i", U+212A "k" and U+017F "s". */
static inline int
same_letter(Py_UCS4 c, char letter)
{
    if (ascii_lower(c) == (Py_UCS4)letter) {
        return 1;
    }
    switch (letter) {
    case 'i':
        return c == 0x130 || c == 0x131;
    case 'k':
        return c == 0x212A;
    case 's':
        return c == 0x17F;
    default:
        return 0;
    }
}

#define F_(name, width) name##_##width
#define F__(name, width) F_(name, width)
#define F(name) F__(name, WIDTH)

#define CHAR_T Py_UCS1
#define WIDTH ucs1
#include "_tagscan.h"
#undef CHAR_T
#undef WIDTH

#define CHAR_T Py_UCS2
#define WIDTH ucs2
#include "_tagscan.h"
#undef CHAR_T
#undef WIDTH

#define CHAR_T Py_UCS4
#define WIDTH ucs4
#include "_tagscan.h"
#undef CHAR_T
#undef WIDTH

PyDoc_STRVAR(next_tag_doc,
             "next_tag(source, pos, images)\n--\n\n"
             "The next wanted start tag from pos, as scan_tags steps over what comes before "
             "it: (start, end of its name, end of the tag), or None. Wanted are <a>, <area> "
             "and VML shapes, or with images <img> and VML shapes.");

static PyObject *
next_tag(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "next_tag(source: str, pos: int, images: bool)");
        return NULL;
    }
    PyObject *source = args[0];
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int images = PyObject_IsTrue(args[2]);
    if (images < 0) {
        return NULL;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(source);
    if (pos < 0 || pos > n) {
        PyErr_SetString(PyExc_ValueError, "pos is outside the source");
        return NULL;
    }
    Py_ssize_t start, name_end = 0, tag_end = 0;
    const void *data = PyUnicode_DATA(source);
    switch (PyUnicode_KIND(source)) {
    case PyUnicode_1BYTE_KIND:
        start = next_tag_ucs1((const Py_UCS1 *)data, n, pos, images, &name_end, &tag_end);
        break;
    case PyUnicode_2BYTE_KIND:
        start = next_tag_ucs2((const Py_UCS2 *)data, n, pos, images, &name_end, &tag_end);
        break;
    default:
        start = next_tag_ucs4((const Py_UCS4 *)data, n, pos, images, &name_end, &tag_end);
        break;
    }
    if (start < 0) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(nnn)", start, name_end, tag_end);
}

static PyMethodDef methods[] = {
    {"next_tag", (PyCFunction)(void (*)(void))next_tag, METH_FASTCALL, next_tag_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_tagscan",
    .m_doc = "The tag scan of core.markup, in C.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__tagscan(void)
{
    return PyModuleDef_Init(&module);
}
