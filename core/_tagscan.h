/* The scanner for one width of string storage. _tagscan.c includes this file once for each
 * of Py_UCS1, Py_UCS2 and Py_UCS4, with CHAR_T the element type and F(name) a name of its
 * own for every function. Each function does what the Python code it names does in
 * core/markup.py (scan_tags, _parse_attributes, the closing search of a raw-text element). */

static int
F(starts_with)(const CHAR_T *s, Py_ssize_t n, Py_ssize_t pos, const char *literal)
{
    for (; *literal; literal++, pos++) {
        if (pos >= n || s[pos] != (unsigned char)*literal) {
            return 0;
        }
    }
    return 1;
}

/* source.find(c, pos) + 1, or n when there is none. */
static Py_ssize_t
F(after_char)(const CHAR_T *s, Py_ssize_t n, Py_ssize_t pos, CHAR_T c)
{
    for (; pos < n; pos++) {
        if (s[pos] == c) {
            return pos + 1;
        }
    }
    return n;
}

/* After source.find(three, pos), or n when there is none. */
static Py_ssize_t
F(after_three)(const CHAR_T *s, Py_ssize_t n, Py_ssize_t pos, char a, char b, char c)
{
    for (; pos + 2 < n; pos++) {
        if (s[pos] == (CHAR_T)a && s[pos + 1] == (CHAR_T)b && s[pos + 2] == (CHAR_T)c) {
            return pos + 3;
        }
    }
    return n;
}

/* The letters of "[endif]" from pos, in either case as re.IGNORECASE reads them. */
static int
F(endif_at)(const CHAR_T *s, Py_ssize_t n, Py_ssize_t pos)
{
    return pos + 6 < n && s[pos] == '[' && same_letter(s[pos + 1], 'e') &&
           same_letter(s[pos + 2], 'n') && same_letter(s[pos + 3], 'd') &&
           same_letter(s[pos + 4], 'i') && same_letter(s[pos + 5], 'f') && s[pos + 6] == ']';
}

/* _CONDITIONAL_MARKERS at pos, where "<!--" stands: its end, or -1. */
static Py_ssize_t
F(marker_end)(const CHAR_T *s, Py_ssize_t n, Py_ssize_t pos)
{
    if (F(endif_at)(s, n, pos + 4) && F(starts_with)(s, n, pos + 11, "-->")) {
        return pos + 14; /* <!--[endif]--> */
    }
    if (pos + 4 < n && s[pos + 4] == '>') {
        return pos + 5; /* <!--> */
    }
    if (F(starts_with)(s, n, pos + 4, "<!") && F(endif_at)(s, n, pos + 6) &&
        F(starts_with)(s, n, pos + 13, "-->")) {
        return pos + 16; /* <!--<![endif]--> */
    }
    return -1;
}

/* _CONDITIONAL_OPEN (<!--[if ...]>) at pos, where "<!--" stands: its end, or -1. */
static Py_ssize_t
F(conditional_end)(const CHAR_T *s, Py_ssize_t n, Py_ssize_t pos)
{
    if (!(pos + 6 < n && s[pos + 4] == '[' && same_letter(s[pos + 5], 'i') &&
          same_letter(s[pos + 6], 'f'))) {
        return -1;
    }
    Py_ssize_t q = pos + 7;
    while (q < n && s[q] != ']') {
        q++;
    }
    return q + 1 < n && s[q + 1] == '>' ? q + 2 : -1;
}

/* Where _parse_attributes, reading from pos (just after a tag's name), stops: after the
 * tag's ">", or n when it never closes. */
static Py_ssize_t
F(attributes_end)(const CHAR_T *s, Py_ssize_t n, Py_ssize_t pos)
{
    for (;;) {
        Py_ssize_t q = pos;
        while (q < n && (is_blank(s[q]) || s[q] == '/')) {
            q++;
        }
        if (q >= n || s[q] == '>') {
            break; /* no further attribute */
        }
        q++; /* a name's first character may be "=" or a quote */
        while (q < n && !is_blank(s[q]) && s[q] != '/' && s[q] != '>' && s[q] != '=') {
            q++;
        }
        pos = q;
        while (q < n && is_blank(s[q])) {
            q++;
        }
        if (q < n && s[q] == '=') {
            q++;
            while (q < n && is_blank(s[q])) {
                q++;
            }
            if (q < n && (s[q] == '"' || s[q] == '\'')) {
                CHAR_T quote = s[q];
                q++;
                while (q < n && s[q] != quote) {
                    q++;
                }
                if (q < n) {
                    q++;
                }
            }
            else {
                while (q < n && !is_blank(s[q]) && s[q] != '>') {
                    q++;
                }
            }
            pos = q;
        }
    }
    while (pos < n && (is_blank(s[pos]) || s[pos] == '/')) {
        pos++;
    }
    return pos < n && s[pos] == '>' ? pos + 1 : n;
}

/* ASCII case-insensitive equality of a tag name (ASCII by construction) with a lower-case
 * literal, as name.lower() == literal. */
static int
F(name_is)(const CHAR_T *name, Py_ssize_t length, const char *literal)
{
    Py_ssize_t i = 0;
    for (; i < length; i++) {
        if (!literal[i] || ascii_lower(name[i]) != (unsigned char)literal[i]) {
            return 0;
        }
    }
    return literal[i] == '\0';
}

/* The raw-text element (script, style...) the tag name is, or NULL. */
static const char *
F(raw_text_name)(const CHAR_T *name, Py_ssize_t length)
{
    for (int i = 0; RAW_TEXT[i]; i++) {
        if (F(name_is)(name, length, RAW_TEXT[i])) {
            return RAW_TEXT[i];
        }
    }
    return NULL;
}

/* The start of "</name" followed by a space, "/" or ">", searched from pos as scan_tags
 * does (re.IGNORECASE, so its case folding, and Unicode spaces); n when there is none. */
static Py_ssize_t
F(raw_text_end)(const CHAR_T *s, Py_ssize_t n, Py_ssize_t pos, const char *name)
{
    Py_ssize_t length = (Py_ssize_t)strlen(name);
    for (Py_ssize_t q = pos; q + 2 + length < n; q++) {
        if (s[q] != '<' || s[q + 1] != '/') {
            continue;
        }
        Py_ssize_t i = 0;
        while (i < length && same_letter(s[q + 2 + i], name[i])) {
            i++;
        }
        if (i == length) {
            Py_UCS4 after = s[q + 2 + length];
            if (after == '/' || after == '>' || Py_UNICODE_ISSPACE(after)) {
                return q;
            }
        }
    }
    return n;
}

/* The next start tag from pos that is wanted (<a>, <area> and VML shapes, or with images
 * <img> and VML shapes), as scan_tags steps over everything before it: the offset of its
 * "<", with the end of its name and the tag's end; -1 when there is none. */
static Py_ssize_t
F(next_tag)(const CHAR_T *s, Py_ssize_t n, Py_ssize_t pos, int images,
            Py_ssize_t *name_end, Py_ssize_t *tag_end)
{
    for (;;) {
        while (pos < n && s[pos] != '<') {
            pos++;
        }
        if (pos + 1 >= n) {
            return -1;
        }
        if (F(starts_with)(s, n, pos, "<!--")) {
            Py_ssize_t end = F(conditional_end)(s, n, pos);
            if (end < 0) {
                end = F(marker_end)(s, n, pos);
            }
            pos = end >= 0 ? end : F(after_three)(s, n, pos + 4, '-', '-', '>');
            continue;
        }
        if (F(starts_with)(s, n, pos, "<![endif]")) {
            pos = F(after_char)(s, n, pos, '>');
            continue;
        }
        if (F(starts_with)(s, n, pos, "<![CDATA[")) {
            pos = F(after_three)(s, n, pos, ']', ']', '>');
            continue;
        }
        Py_UCS4 following = s[pos + 1];
        if (following == '!' || following == '?' || following == '/') {
            pos = F(after_char)(s, n, pos, '>');
            continue;
        }
        if (!is_ascii_letter(following)) {
            pos += 1;
            continue;
        }
        Py_ssize_t start = pos;
        Py_ssize_t end_of_name = pos + 2;
        while (end_of_name < n && is_name_char(s[end_of_name])) {
            end_of_name++;
        }
        Py_ssize_t end = F(attributes_end)(s, n, end_of_name);
        const CHAR_T *name = s + start + 1;
        Py_ssize_t length = end_of_name - start - 1;
        int vml = length >= 2 && ascii_lower(name[0]) == 'v' && name[1] == ':';
        int wanted = vml || (images ? F(name_is)(name, length, "img")
                                    : F(name_is)(name, length, "a") ||
                                          F(name_is)(name, length, "area"));
        if (wanted) {
            *name_end = end_of_name;
            *tag_end = end;
            return start;
        }
        pos = end;
        const char *raw = F(raw_text_name)(name, length);
        if (raw != NULL) {
            pos = F(raw_text_end)(s, n, pos, raw);
        }
    }
}
