/*
 * One pass over a response's "logprobs" value, straight into the arrays
 * the proxy needs: monitor.proxy.capture's optional native fast path.
 *
 * Why hand-written: on the proxy's critical path (before the response headers,
 * which carry the confidence) msgspec built ~1,400 small objects per 200-token
 * top-5 answer only for numpy to flatten them again; with the caches cold after
 * every wait for the upstream that was most of the sidecar's added latency
 * (docs/proxy-benchmark-history.md, sixth session). No JSON library fills
 * typed arrays from nested objects without building those objects. This
 * scanner builds none but the chosen tokens' strings, and on the request path
 * not those either (`lazy`, below).
 *
 * Contract (tested against the pure-Python path in tests/proxy/test_native_scan.py):
 * scan_chat(buf, start, k, decode) parses exactly one JSON object at buf[start]
 * and returns (end, tokens, chosen, top, rank), the same values
 * capture.logprob_arrays computes from the msgspec decode, as float32 / int8
 * bytearrays, or None whenever it is not sure: any JSON it does not fully
 * validate, a type msgspec would reject, a duplicate key, a null logprob, a
 * number that is not finite, a nesting deeper than MAX_DEPTH. None means
 * "use the Python path", never "invalid": the scanner accepts a subset of
 * what msgspec accepts. `decode` (msgspec.json.decode) turns escaped string
 * literals into str, so no JSON unescaping is written here. With `lazy` true
 * (what capture does) tokens is instead a table of where each token's literal
 * sits in buf, every one checked to decode, and decode_tokens(buf, table,
 * decode) builds the same strings when something reads them.
 *
 * scan_completions does the same for the legacy completions form (parallel
 * arrays, top_logprobs as {token: logprob} objects), declining what the
 * Python path would pad, cut or merge (see scan_completion_logprobs).
 *
 * Also here: scan_chat_many and scan_completions_many, the same over a
 * stream's chunks (one logprobs object each, tokens always as strings);
 * window_confidence, the per-response confidence's loop; and buffer_address,
 * for the spans of msgspec.Raw views.
 *
 * Portability: strtod_l and newlocale are POSIX 2008 (glibc, musl, macOS);
 * setup.py builds this module optionally, so a platform without them falls
 * back to the Python path.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <locale.h>
#include <stdlib.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__) /* x86-64 always has it; elsewhere the scalar loops do it all */
#include <emmintrin.h>
#endif

#define SENTINEL (-9999.0f) /* vLLM's stand-in for -inf */
#define MAX_DEPTH 64
#define MAX_NUMBER 64

typedef struct {
    const char *p;
    const char *end;
} Cursor;

typedef struct { /* a string literal: the bytes between the quotes */
    const char *s;
    Py_ssize_t len;
    int escaped;
} Str;

typedef struct { /* one alternative of a position's top_logprobs */
    float lp;
    Str token;
} Alt;

typedef struct {
    Str token;
    float lp;
    Py_ssize_t first_alt; /* index into the flat alternatives */
    Py_ssize_t n_alts;
} Row;

typedef struct {
    Row *rows;
    Py_ssize_t n_rows, cap_rows;
    Alt *alts;
    Py_ssize_t n_alts, cap_alts;
} Parsed;

static const Str EMPTY = {"", 0, 0};
static locale_t c_locale; /* strtod in the C locale, whatever the process set */

/* Bytes that end the plain run of a string literal: the quote, a backslash,
 * control characters. */
static unsigned char STRING_STOP[256];
static unsigned char IS_WS[256];

static inline void skip_ws(Cursor *c) {
    const char *p = c->p, *e = c->end;
    while (p < e && IS_WS[(unsigned char)*p]) p++;
    c->p = p;
}

/* The first byte at or after p that ends a string literal's plain run, or e. */
static inline const char *string_run(const char *p, const char *e) {
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i control = _mm_set1_epi8(0x1F);
    while (e - p >= 16) { /* 16 bytes a step: tokens and keys mostly end in the first */
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        __m128i ends = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
        __m128i stop = _mm_or_si128(ends, _mm_cmpeq_epi8(_mm_min_epu8(v, control), v));
        unsigned m = (unsigned)_mm_movemask_epi8(stop);
        if (m) return p + __builtin_ctz(m);
        p += 16;
    }
#endif
    while (p < e && !STRING_STOP[(unsigned char)*p]) p++;
    return p;
}

static inline int hex4(const char *p) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        v <<= 4;
        if (ch >= '0' && ch <= '9') v |= ch - '0';
        else if (ch >= 'a' && ch <= 'f') v |= ch - 'a' + 10;
        else if (ch >= 'A' && ch <= 'F') v |= ch - 'A' + 10;
        else return -1;
    }
    return v;
}

/* A string literal at c->p (an opening quote). Validates escapes and control
 * characters; UTF-8 is checked where the string is decoded (decode_str) or by
 * utf8_valid. */
static inline int scan_string(Cursor *c, Str *out) {
    const char *p = c->p, *e = c->end;
    if (p >= e || *p != '"') return 0;
    const char *s = ++p;
    int escaped = 0;
    for (;;) {
        p = string_run(p, e);
        if (p >= e) return 0;
        unsigned char ch = (unsigned char)*p;
        if (ch == '"') break;
        if (ch < 0x20) return 0;
        escaped = 1; /* a backslash */
        if (e - p < 2) return 0;
        ch = (unsigned char)p[1];
        if (ch == 'u') {
            if (e - p < 6) return 0;
            int v = hex4(p + 2);
            if (v < 0) return 0;
            p += 6;
            if (v >= 0xDC00 && v <= 0xDFFF) return 0; /* lone low surrogate */
            if (v >= 0xD800 && v <= 0xDBFF) {         /* must pair with a low one */
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u') return 0;
                int lo = hex4(p + 2);
                if (lo < 0xDC00 || lo > 0xDFFF) return 0;
                p += 6;
            }
        } else if (ch != '\0' && strchr("\"\\/bfnrt", ch) != NULL) {
            p += 2;
        } else {
            return 0;
        }
    }
    out->s = s;
    out->len = p - s;
    out->escaped = escaped;
    c->p = p + 1;
    return 1;
}

/* JSON number grammar at c->p: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static inline int skip_number(Cursor *c) {
    const char *p = c->p, *e = c->end;
    if (p < e && *p == '-') p++;
    if (p >= e) return 0;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (p < e && *p >= '0' && *p <= '9') p++;
    else return 0;
    if (p < e && *p == '.') {
        p++;
        if (p >= e || *p < '0' || *p > '9') return 0;
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || *p < '0' || *p > '9') return 0;
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    c->p = p;
    return 1;
}

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
/* 10^-k rounded to double: one more half-ulp of error than dividing by 10^k,
 * well inside the margin below, and a multiply instead of a division. */
static const double NEG_POW10[] = {1e0,   1e-1,  1e-2,  1e-3,  1e-4,  1e-5,  1e-6,  1e-7,
                                   1e-8,  1e-9,  1e-10, 1e-11, 1e-12, 1e-13, 1e-14, 1e-15,
                                   1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22};

/* 10^0 to 10^16: the place values of a number of up to 17 digits. */
static const uint64_t POW10_U64[] = {
    1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL,
    100000ULL, 1000000ULL, 10000000ULL, 100000000ULL, 1000000000ULL,
    10000000000ULL, 100000000000ULL, 1000000000000ULL, 10000000000000ULL, 100000000000000ULL,
    1000000000000000ULL, 10000000000000000ULL};

#if defined(__SSE2__)
/* Bit i set where byte i of v is an ASCII digit. */
static inline unsigned digit_bytes(__m128i v) {
    __m128i d = _mm_sub_epi8(v, _mm_set1_epi8('0'));
    return (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d));
}
#endif

/* The value of the n (0..8) ASCII digits at p (little-endian load, 8 bytes
 * readable), known to be digits: adjacent digits paired (d0*10 + d1) by one
 * multiply, pairs into fours and fours into the eight by two more. For n < 8
 * zeros stand in for the missing leading digits; a byte after the digits
 * that is below '0' borrows only from the bytes above it, which the mask
 * drops. */
static inline uint64_t few_digits(const char *p, unsigned n) {
    if (n == 0) return 0;
    uint64_t v;
    memcpy(&v, p, 8);
    uint64_t d = v - 0x3030303030303030ULL;
    if (n < 8) d = (d & ((1ULL << (8 * n)) - 1)) << (8 * (8 - n));
    d = (d * 10 + (d >> 8)) & 0x00FF00FF00FF00FFULL;   /* 4 x two-digit values */
    d = (d * 100 + (d >> 16)) & 0x0000FFFF0000FFFFULL; /* 2 x four-digit values */
    return (d * 10000 + (d >> 32)) & 0xFFFFFFFFULL;    /* the eight digits */
}

/* Eight ASCII digits at p as their value, or -1 when any of the eight is not
 * a digit. Logprobs carry ~16 fraction digits; a digit-at-a-time loop was
 * most of the scan. Each byte minus '0' must be 0..9: no borrow out of a byte
 * and no byte above 9 (adding 6 keeps it below 16). */
static inline int64_t eight_digits(const char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    uint64_t d = v - 0x3030303030303030ULL;
    if (((v & 0xF0F0F0F0F0F0F0F0ULL) != 0x3030303030303030ULL) ||
        ((d + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL))
        return -1;
    return (int64_t)few_digits(p, 8);
}

/* The float32 next to f towards +inf and -inf (f finite, not NaN), without
 * libm calls: float bit patterns are ordered like their magnitudes. */
static inline void float_neighbours(float f, float *up, float *down) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7FFFFFFFu) == 0) { /* +-0 */
        uint32_t tiny = 1, neg_tiny = 0x80000001u;
        memcpy(up, &tiny, 4);
        memcpy(down, &neg_tiny, 4);
        return;
    }
    uint32_t away = bits + 1, towards = bits - 1;
    if (bits & 0x80000000u) { /* negative: away from zero is down */
        memcpy(down, &away, 4);
        memcpy(up, &towards, 4);
    } else {
        memcpy(up, &away, 4);
        memcpy(down, &towards, 4);
    }
}

/* A number at c->p, validated as skip_number does, and the float32 it rounds
 * to through float64 (what numpy's cast of msgspec's float gives), in one pass.
 * w * 10^exp in float64 arithmetic is within ~1.5 ulps of the exact value
 * (10^exp is exact up to 1e22, 10^-exp within half an ulp), so where that
 * lands more than a few ulps from a float32 rounding midpoint, the correctly
 * rounded double rounds to the same float32. Anything else (long significands,
 * large exponents, near a midpoint) goes through strtod, correctly rounded. */
static int scan_number(Cursor *c, float *out) {
    const char *s = c->p, *p = c->p, *e = c->end;
    int neg = 0, exact = 1, sig = 0;
    long exp10 = 0;
    uint64_t w = 0;
#if defined(__SSE2__)
    /* How nearly every logprob is spelled, -?D.D{1,16} and no exponent (the
     * repr of a float64 between -10 and 0 that is not tiny), in one step: the
     * fraction's digits found by one 16-byte compare and valued eight at a
     * time. The digit-by-digit path below was most of this function's
     * instructions for these. */
    const char *q = p + (p < e && *p == '-');
    if (e - q >= 19 && (unsigned char)(q[0] - '0') <= 9 && q[1] == '.') {
        unsigned dig = digit_bytes(_mm_loadu_si128((const __m128i *)(q + 2)));
        unsigned n = (unsigned)__builtin_ctz(~dig); /* the fraction's digits in the 16 bytes */
        const char *after = q + 2 + n;
        if (n > 0 && (unsigned char)(*after - '0') > 9 && *after != 'e' && *after != 'E') {
            uint64_t frac = n > 8 ? few_digits(q + 2, 8) * POW10_U64[n - 8] +
                                        few_digits(q + 10, n - 8)
                                  : few_digits(q + 2, n);
            w = (uint64_t)(q[0] - '0') * POW10_U64[n] + frac; /* at most 17 digits: exact */
            neg = q != p;
            exp10 = -(long)n;
            p = after;
            goto convert;
        }
    }
#endif
    if (p < e && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= e) return 0;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9')
        for (; p < e && *p >= '0' && *p <= '9'; p++) {
            if (sig++ < 19) w = w * 10 + (uint64_t)(*p - '0');
            else exact = 0, exp10++;
        }
    else return 0;
    if (p < e && *p == '.') {
        const char *fraction = ++p;
        if (w == 0) /* leading zeros of a fraction are not significant */
            for (; p < e && *p == '0'; p++) exp10--;
        int64_t eight;
        while (e - p >= 8 && sig <= 11 && (eight = eight_digits(p)) >= 0) {
            w = w * 100000000ULL + (uint64_t)eight;
            sig += 8;
            exp10 -= 8;
            p += 8;
        }
        for (; p < e && *p >= '0' && *p <= '9'; p++) {
            if (w == 0 && *p == '0') {
                exp10--;
                continue;
            }
            if (sig++ < 19) {
                w = w * 10 + (uint64_t)(*p - '0');
                exp10--;
            } else {
                exact = 0;
            }
        }
        if (p == fraction) return 0;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        int eneg = 0;
        long ev = 0;
        p++;
        if (p < e && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        const char *digits = p;
        for (; p < e && *p >= '0' && *p <= '9'; p++)
            if (ev < 100000) ev = ev * 10 + (*p - '0');
        if (p == digits) return 0;
        exp10 += eneg ? -ev : ev;
    }
#if defined(__SSE2__)
convert:
#endif
    c->p = p;
    if (exact && exp10 >= -22 && exp10 <= 22) {
        double d = (double)w * (exp10 < 0 ? NEG_POW10[-exp10] : POW10[exp10]);
        if (d <= 1e38) {
            float f = (float)d, up, down;
            float_neighbours(f, &up, &down);
            double mid_up = ((double)f + (double)up) * 0.5;
            double mid_down = ((double)f + (double)down) * 0.5;
            double margin = d * 1e-15; /* ~4.5 ulps of d */
            if (d - mid_down > margin && mid_up - d > margin) {
                *out = neg ? -f : f;
                return 1;
            }
        }
    }
    Py_ssize_t len = p - s;
    char buf[MAX_NUMBER + 1];
    if (len > MAX_NUMBER) return 0;
    memcpy(buf, s, (size_t)len);
    buf[len] = '\0';
    char *stop = NULL;
    double v = strtod_l(buf, &stop, c_locale);
    /* beyond float32's range numpy would give inf: leave that to the Python path */
    if (stop != buf + len || !(fabs(v) <= FLT_MAX)) return 0;
    *out = (float)v;
    return 1;
}

static inline int scan_literal(Cursor *c, const char *word, Py_ssize_t len) {
    if (c->end - c->p < len || memcmp(c->p, word, len) != 0) return 0;
    c->p += len;
    return 1;
}

static int skip_value(Cursor *c, int depth);

#if defined(__SSE2__)
/* skip_int_array's bulk, 16 bytes at a time (SSE2 is part of x86-64): whole
 * blocks of only digits and commas, held to the grammar the scalar loop
 * applies (no empty element, no leading zero; signs and anything else end the
 * blocks). A ']' that closes the array inside a block, after valid elements,
 * sets *closed to the byte after it: most arrays end in their first or second
 * block, and re-reading their last element byte by byte was half this
 * function's instructions. Otherwise returns where the scalar loop resumes,
 * the start of the last element begun (an element a block cut is re-read), or
 * NULL where the blocks are invalid JSON. */
static const char *int_blocks(const char *p, const char *e, const char **closed) {
    const char *resume = p;
    unsigned after_sep = 1;  /* bit 0 of the next block's separator mask: p follows '[' */
    unsigned open_zero = 0;  /* the last block ended in an element that is "0" so far */
    const __m128i zero = _mm_set1_epi8('0'), comma = _mm_set1_epi8(',');
    while (e - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        unsigned dig = digit_bytes(v);
        unsigned com = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, comma));
        unsigned zero_at = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero));
        if ((dig | com) != 0xFFFF) {
            /* The whole block's check below, cut at the ']': kept apart because
             * one masked check for both cases cost every full block ~5
             * instructions (16,000 an answer, 1-6% of the scan). */
            unsigned j = (unsigned)__builtin_ctz(~(dig | com)); /* the first other byte */
            if (p[j] != ']') break;
            unsigned below = (1u << j) - 1, dg = dig & below, cm = com & below;
            unsigned starts = ((cm << 1) | after_sep) & ((below << 1) | 1); /* up to j */
            unsigned zeros = zero_at & starts & below;
            if ((starts >> j & 1) || (cm & starts) || (zeros & (dg >> 1)) ||
                (open_zero && (dg & 1)))
                break; /* an empty element or a leading zero: the scalar loop says so */
            *closed = p + j + 1;
            return p;
        }
        unsigned starts = ((com << 1) | after_sep) & 0xFFFF; /* bytes that begin an element */
        unsigned zeros = zero_at & starts;
        if ((com & starts) || (zeros & (dig >> 1)) || (open_zero && (dig & 1))) return NULL;
        open_zero = zeros >> 15;
        after_sep = com >> 15;
        if (com) resume = p + (32 - __builtin_clz(com)); /* just past the last comma */
        p += 16;
    }
    return resume;
}
#endif

/* An array of integers in compact form (vLLM's "bytes" of every token, a third
 * of a body) in one tight loop, c->p just past the '['. 0 leaves c->p where it
 * was, for the generic path: spaces, fractions, anything else. */
static int skip_int_array(Cursor *c) {
    const char *p = c->p, *e = c->end;
    if (p < e && *p == ']') {
        c->p = p + 1;
        return 1;
    }
#if defined(__SSE2__)
    const char *closed = NULL;
    p = int_blocks(p, e, &closed);
    if (p == NULL) return 0;
    if (closed != NULL) {
        c->p = closed;
        return 1;
    }
#endif
    for (;;) {
        if (p < e && *p == '-') p++;
        if (p >= e) return 0;
        if (*p == '0') p++;
        else if (*p >= '1' && *p <= '9')
            for (p++; p < e && *p >= '0' && *p <= '9';) p++;
        else return 0;
        if (p >= e) return 0;
        if (*p == ',') p++;
        else if (*p == ']') {
            c->p = p + 1;
            return 1;
        } else return 0;
    }
}

/* Walks the members of an object or array (c->p just past the opener). */
static int skip_container(Cursor *c, int depth, char close, int is_object) {
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        return 1;
    }
    for (;;) {
        if (is_object) {
            Str key;
            skip_ws(c);
            if (!scan_string(c, &key)) return 0;
            skip_ws(c);
            if (c->p >= c->end || *c->p != ':') return 0;
            c->p++;
        }
        if (!skip_value(c, depth + 1)) return 0;
        skip_ws(c);
        if (c->p >= c->end) return 0;
        if (*c->p == ',') {
            c->p++;
            continue;
        }
        if (*c->p == close) {
            c->p++;
            return 1;
        }
        return 0;
    }
}

static int skip_value(Cursor *c, int depth) {
    Str ignored;
    if (depth > MAX_DEPTH) return 0;
    skip_ws(c);
    if (c->p >= c->end) return 0;
    switch (*c->p) {
    case '"':
        return scan_string(c, &ignored);
    case '{':
        c->p++;
        return skip_container(c, depth, '}', 1);
    case '[':
        c->p++;
        return skip_int_array(c) || skip_container(c, depth, ']', 0);
    case 't':
        return scan_literal(c, "true", 4);
    case 'f':
        return scan_literal(c, "false", 5);
    case 'n':
        return scan_literal(c, "null", 4);
    default:
        return skip_number(c);
    }
}

static inline int key_is(const Str *key, const char *name, Py_ssize_t len) {
    return !key->escaped && key->len == len && memcmp(key->s, name, len) == 0;
}

/* Object iteration: 1 and the key with c->p at its value, 0 at the closing
 * brace, -1 on invalid JSON. `first` is set by the caller to 1 before the loop. */
static int next_key(Cursor *c, Str *key, int *first) {
    skip_ws(c);
    if (c->p >= c->end) return -1;
    if (*first) {
        *first = 0;
        if (*c->p == '}') {
            c->p++;
            return 0;
        }
    } else if (*c->p == '}') {
        c->p++;
        return 0;
    } else if (*c->p == ',') {
        c->p++;
        skip_ws(c);
    } else {
        return -1;
    }
    if (!scan_string(c, key)) return -1;
    skip_ws(c);
    if (c->p >= c->end || *c->p != ':') return -1;
    c->p++;
    skip_ws(c);
    return 1;
}

/* Array iteration, same convention: 1 with c->p at the next element. */
static int next_element(Cursor *c, int *first) {
    skip_ws(c);
    if (c->p >= c->end) return -1;
    if (*c->p == ']') {
        c->p++;
        return 0;
    }
    if (*first) {
        *first = 0;
        return 1;
    }
    if (*c->p != ',') return -1;
    c->p++;
    skip_ws(c);
    return 1;
}

static int grow(void **buf, Py_ssize_t *cap, Py_ssize_t need, size_t size) {
    if (need <= *cap) return 1;
    Py_ssize_t cap2 = *cap ? *cap * 2 : 256;
    while (cap2 < need) cap2 *= 2;
    void *p = PyMem_Realloc(*buf, (size_t)cap2 * size);
    if (p == NULL) return 0;
    *buf = p;
    *cap = cap2;
    return 1;
}

static int scan_entry(Cursor *c, Str *token, float *lp, Parsed *out, Row *row);

/* A position's "top_logprobs" value, c->p at it: null, or an array whose
 * alternatives are appended to `out` and counted in `row`. Returns as
 * scan_entry does. */
static int scan_alternatives(Cursor *c, Parsed *out, Row *row) {
    if (scan_literal(c, "null", 4)) return 1;
    if (c->p >= c->end || *c->p != '[') return 0;
    c->p++;
    int first = 1, e;
    while ((e = next_element(c, &first)) == 1) {
        if (!grow((void **)&out->alts, &out->cap_alts, out->n_alts + 1, sizeof(Alt))) return -1;
        Alt *alt = &out->alts[out->n_alts];
        int ok = scan_entry(c, &alt->token, &alt->lp, NULL, NULL);
        if (ok != 1) return ok;
        out->n_alts++;
        row->n_alts++;
    }
    return e == 0;
}

/* {"token": str, "logprob": number, ...}: the fields both levels share.
 * Returns 1, 0 (not sure: decline) or -1 (memory error). `row` non-NULL:
 * this is a position, whose "top_logprobs" are appended to `out`.
 *
 * The members vLLM writes, in its order and compact spelling, are matched as
 * literal bytes first (most of a body's keys, without the general key loop);
 * the general loop then reads whatever follows, or the whole object when its
 * first member is spelled any other way. The seen_* flags span both. */
static int scan_entry(Cursor *c, Str *token, float *lp, Parsed *out, Row *row) {
    Str key;
    int first = 1, r, seen_token = 0, seen_lp = 0, seen_top = 0;
    *token = EMPTY;
    *lp = SENTINEL;
    if (scan_literal(c, "{\"token\":", 9)) {
        first = 0;
        seen_token = 1;
        skip_ws(c);
        if (!scan_string(c, token)) return 0;
        if (scan_literal(c, ",\"logprob\":", 11)) {
            seen_lp = 1;
            skip_ws(c);
            if (!scan_number(c, lp)) return 0;
            /* skip_value's '[' case, without its call: the hottest member */
            if (scan_literal(c, ",\"bytes\":[", 10) &&
                !(skip_int_array(c) || skip_container(c, 3, ']', 0)))
                return 0;
            if (row != NULL && scan_literal(c, ",\"top_logprobs\":[", 17)) {
                seen_top = 1;
                c->p--; /* back to the '[': matching it here measured 3-6% faster */
                if ((r = scan_alternatives(c, out, row)) != 1) return r;
            }
        }
    } else if (c->p < c->end && *c->p == '{') {
        c->p++;
    } else {
        return 0;
    }
    while ((r = next_key(c, &key, &first)) == 1) {
        if (key_is(&key, "token", 5)) {
            if (seen_token++ || !scan_string(c, token)) return 0;
        } else if (key_is(&key, "logprob", 7)) {
            if (seen_lp++ || !scan_number(c, lp)) return 0;
        } else if (row != NULL && key_is(&key, "top_logprobs", 12)) {
            if (seen_top++) return 0;
            int ok = scan_alternatives(c, out, row);
            if (ok != 1) return ok;
        } else if (key.escaped) {
            return 0; /* an escaped key might spell one of ours */
        } else if (!skip_value(c, 3)) {
            return 0;
        }
    }
    return r == 0;
}

/* {"content": [entries] | null, ...} */
static int scan_logprobs(Cursor *c, Parsed *out) {
    Str key;
    int first = 1, r, seen_content = 0;
    skip_ws(c);
    if (c->p >= c->end || *c->p != '{') return 0;
    c->p++;
    while ((r = next_key(c, &key, &first)) == 1) {
        if (key_is(&key, "content", 7)) {
            if (seen_content++) return 0;
            if (scan_literal(c, "null", 4)) continue;
            if (c->p >= c->end || *c->p != '[') return 0;
            c->p++;
            int efirst = 1, e;
            while ((e = next_element(c, &efirst)) == 1) {
                if (!grow((void **)&out->rows, &out->cap_rows, out->n_rows + 1, sizeof(Row)))
                    return -1;
                Row *row = &out->rows[out->n_rows];
                row->first_alt = out->n_alts;
                row->n_alts = 0;
                int ok = scan_entry(c, &row->token, &row->lp, out, row);
                if (ok != 1) return ok;
                out->n_rows++;
            }
            if (e < 0) return 0;
        } else if (key.escaped) {
            return 0;
        } else if (!skip_value(c, 1)) {
            return 0;
        }
    }
    return r == 0;
}

/* The string a literal stands for: new reference, or NULL with no error set
 * when it is not valid (the caller declines). */
static PyObject *decode_str(const Str *s, PyObject *decode) {
    PyObject *value;
    if (!s->escaped) {
        value = PyUnicode_DecodeUTF8(s->s, s->len, NULL);
    } else {
        PyObject *literal = PyBytes_FromStringAndSize(s->s - 1, s->len + 2);
        if (literal == NULL) return NULL;
        value = PyObject_CallOneArg(decode, literal);
        Py_DECREF(literal);
    }
    if (value != NULL && !PyUnicode_Check(value)) Py_CLEAR(value);
    if (value == NULL && !PyErr_ExceptionMatches(PyExc_MemoryError)) PyErr_Clear();
    return value;
}

/* A string literal's UTF-8, byte by byte, its escapes decoded (scan_string
 * has validated them: known escapes, surrogates in pairs). */
typedef struct {
    const char *p, *e;
    unsigned char pending[4];
    int n_pending, next;
} Utf8Bytes;

static int next_byte(Utf8Bytes *it) {
    if (it->next < it->n_pending) return it->pending[it->next++];
    if (it->p >= it->e) return -1;
    unsigned char ch = (unsigned char)*it->p;
    if (ch != '\\') {
        it->p++;
        return ch;
    }
    char esc = it->p[1];
    if (esc != 'u') {
        it->p += 2;
        switch (esc) {
        case 'b': return '\b';
        case 'f': return '\f';
        case 'n': return '\n';
        case 'r': return '\r';
        case 't': return '\t';
        default: return (unsigned char)esc; /* " \ / */
        }
    }
    unsigned cp = (unsigned)hex4(it->p + 2);
    it->p += 6;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        cp = 0x10000 + ((cp - 0xD800) << 10) + ((unsigned)hex4(it->p + 2) - 0xDC00);
        it->p += 6;
    }
    unsigned char *b = it->pending;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        it->n_pending = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | cp >> 6);
        b[1] = (unsigned char)(0x80 | (cp & 0x3F));
        it->n_pending = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | cp >> 12);
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F));
        it->n_pending = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | cp >> 18);
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (unsigned char)(0x80 | (cp & 0x3F));
        it->n_pending = 4;
    }
    it->next = 1;
    return b[0];
}

/* Token-string equality for the rows numbers do not settle and the keys of
 * one completions top_logprobs object: the two literals' UTF-8 compared, with
 * escapes decoded, so no Python string is built. The answer holds for valid
 * UTF-8, which is checked afterwards (alternatives_valid) wherever it was
 * asked. */
static int same_token(const Str *a, const Str *b) {
    if (!a->escaped && !b->escaped) return a->len == b->len && memcmp(a->s, b->s, a->len) == 0;
    Utf8Bytes x = {a->s, a->s + a->len, {0}, 0, 0}, y = {b->s, b->s + b->len, {0}, 0, 0};
    for (;;) {
        int bx = next_byte(&x), by = next_byte(&y);
        if (bx != by) return 0;
        if (bx < 0) return 1;
    }
}

/* Strict UTF-8, as Python's decoder reads it: no overlong forms, no
 * surrogates, nothing above U+10FFFF. A literal's escapes are ASCII, and
 * decode to complete sequences, so checking its raw bytes is checking the
 * string. */
static int utf8_valid(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return 0;
        }
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (int j = 2; j < len; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xBF) return 0;
        i += len;
    }
    return 1;
}

/* Every alternative's token is a valid string: what the Python path checks
 * (by decoding them all) as soon as one row needs token strings. 1, or 0. */
static int alternatives_valid(const Parsed *in) {
    for (Py_ssize_t j = 0; j < in->n_alts; j++) {
        const Str *token = &in->alts[j].token;
        if (!utf8_valid((const unsigned char *)token->s, token->len)) return 0;
    }
    return 1;
}

/* The legacy completions form: parallel arrays, in any key order,
 * {"tokens": [str], "token_logprobs": [number], "top_logprobs": [{token: number} | null], ...}.
 * Appends one row per token to `out` (after the rows already there: a stream
 * scans chunk after chunk). Declines what capture.logprob_arrays would read
 * differently or not at all: a null logprob (the Python path makes it NaN),
 * arrays of unequal length (it pads or cuts them), a token repeated within one
 * top_logprobs object (a dict keeps its last value). */
static Row *completions_row(Parsed *out, Py_ssize_t base, Py_ssize_t i, Py_ssize_t *filled) {
    if (!grow((void **)&out->rows, &out->cap_rows, base + i + 1, sizeof(Row))) return NULL;
    for (; *filled <= i; (*filled)++) {
        Row *row = &out->rows[base + *filled];
        row->token = EMPTY;
        row->lp = SENTINEL;
        row->first_alt = 0;
        row->n_alts = 0;
    }
    return &out->rows[base + i];
}

/* 1 when no two of a row's alternatives spell the same token, 0 when two do. */
static int distinct_tokens(const Alt *alts, Py_ssize_t n) {
    for (Py_ssize_t i = 1; i < n; i++)
        for (Py_ssize_t j = 0; j < i; j++)
            if (same_token(&alts[i].token, &alts[j].token)) return 0;
    return 1;
}

static int scan_completion_tops(Cursor *c, Parsed *out, Py_ssize_t base, Py_ssize_t *filled,
                                Py_ssize_t *count) {
    int first = 1, e;
    while ((e = next_element(c, &first)) == 1) {
        Row *row = completions_row(out, base, *count, filled);
        if (row == NULL) return -1;
        (*count)++;
        row->first_alt = out->n_alts;
        row->n_alts = 0;
        if (scan_literal(c, "null", 4)) continue;
        if (c->p >= c->end || *c->p != '{') return 0;
        c->p++;
        Str key;
        int kfirst = 1, r;
        while ((r = next_key(c, &key, &kfirst)) == 1) {
            if (!grow((void **)&out->alts, &out->cap_alts, out->n_alts + 1, sizeof(Alt)))
                return -1;
            Alt *alt = &out->alts[out->n_alts];
            alt->token = key;
            if (!scan_number(c, &alt->lp)) return 0;
            out->n_alts++;
            row->n_alts++;
        }
        if (r < 0) return 0;
        if (!distinct_tokens(out->alts + row->first_alt, row->n_alts)) return 0;
    }
    return e == 0;
}

static int scan_completion_logprobs(Cursor *c, Parsed *out) {
    Str key;
    Py_ssize_t base = out->n_rows, filled = 0, n_tokens = 0, n_lps = 0, n_tops = 0;
    int first = 1, r, seen_tokens = 0, seen_lps = 0, seen_tops = 0;
    skip_ws(c);
    if (c->p >= c->end || *c->p != '{') return 0;
    c->p++;
    while ((r = next_key(c, &key, &first)) == 1) {
        int is_tokens = key_is(&key, "tokens", 6), is_lps = key_is(&key, "token_logprobs", 14);
        if (is_tokens || is_lps) {
            if (is_tokens ? seen_tokens++ : seen_lps++) return 0;
            if (scan_literal(c, "null", 4)) continue;
            if (c->p >= c->end || *c->p != '[') return 0;
            c->p++;
            Py_ssize_t *count = is_tokens ? &n_tokens : &n_lps;
            int efirst = 1, e;
            while ((e = next_element(c, &efirst)) == 1) {
                Row *row = completions_row(out, base, *count, &filled);
                if (row == NULL) return -1;
                (*count)++;
                if (is_tokens ? !scan_string(c, &row->token) : !scan_number(c, &row->lp))
                    return 0;
            }
            if (e < 0) return 0;
        } else if (key_is(&key, "top_logprobs", 12)) {
            if (seen_tops++) return 0;
            if (scan_literal(c, "null", 4)) continue;
            if (c->p >= c->end || *c->p != '[') return 0;
            c->p++;
            int ok = scan_completion_tops(c, out, base, &filled, &n_tops);
            if (ok != 1) return ok;
        } else if (key.escaped) {
            return 0;
        } else if (!skip_value(c, 1)) {
            return 0;
        }
    }
    if (r < 0 || n_lps != n_tokens || n_tops > n_tokens) return 0;
    out->n_rows = base + n_tokens;
    return 1;
}

/* One position's (top row, rank), the rules of capture._arrays applied per row:
 * the chosen token's column is found by its logprob where exactly one
 * alternative holds it above the row's lowest value (or the row is longer
 * than K), by token string otherwise; sentinels become -inf; a stable sort
 * descending; cut or padded to K. Returns 1, or 2 when token strings were
 * compared. */
static int finish_row(const Row *row, Alt *alts, Py_ssize_t k, float *top, signed char *rank,
                      unsigned char *eq) {
    Py_ssize_t n = row->n_alts, j;
    int compared = 0;
    float chosen = row->lp;
    for (j = 0; j < k; j++) top[j] = -INFINITY;
    *rank = -1;
    if (n == 0) return 1;
    float lowest = INFINITY;
    Py_ssize_t matches = 0;
    for (j = 0; j < n; j++) {
        if (alts[j].lp < lowest) lowest = alts[j].lp;
        eq[j] = alts[j].lp == chosen;
        matches += eq[j];
    }
    int at_lowest = !(chosen > lowest) && n <= k;
    if (matches != 1 || at_lowest || !(chosen > SENTINEL)) {
        compared = 1;
        for (j = 0; j < n; j++) eq[j] = (unsigned char)same_token(&alts[j].token, &row->token);
    }
    for (j = 0; j < n; j++)
        if (alts[j].lp <= SENTINEL) alts[j].lp = -INFINITY;
    for (j = 1; j < n; j++) { /* stable insertion sort, descending (rows are ~K+1 long) */
        Alt a = alts[j];
        unsigned char e = eq[j];
        Py_ssize_t i = j;
        while (i > 0 && alts[i - 1].lp < a.lp) {
            alts[i] = alts[i - 1];
            eq[i] = eq[i - 1];
            i--;
        }
        alts[i] = a;
        eq[i] = e;
    }
    Py_ssize_t keep = n < k ? n : k;
    for (j = 0; j < keep; j++) top[j] = alts[j].lp;
    for (j = 0; j < keep; j++)
        if (eq[j]) {
            *rank = (signed char)j;
            break;
        }
    return 1 + compared;
}

/* Where one chosen token's literal sits in the scanned buffer (its content,
 * between the quotes): what decode_tokens reads to build the token's string
 * when it is asked for. 24 bytes on every platform (capture.LazyTokens). */
typedef struct {
    int64_t offset, len, escaped;
} TokenRef;

/* (end, tokens, chosen, top, rank) of what scan_logprobs parsed, or None.
 * `check_all`: every alternative's token must be a valid string even where no
 * row compares them (the stream path's Python decode checks them all).
 * `base` NULL: tokens is a list of str. Otherwise the buffer the rows point
 * into, and tokens is a bytes table of TokenRef, each token checked to decode
 * (utf8_valid; scan_string checked its escapes) but no string built
 * (capture.LazyTokens says why). */
static PyObject *build_result(Parsed *in, Py_ssize_t k, Py_ssize_t end, PyObject *decode,
                              int check_all, const char *base) {
    Py_ssize_t n = in->n_rows, i, widest = 0;
    PyObject *tokens = base == NULL
                           ? PyList_New(n)
                           : PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(TokenRef));
    PyObject *chosen = PyByteArray_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(float));
    PyObject *top = PyByteArray_FromStringAndSize(NULL, n * k * (Py_ssize_t)sizeof(float));
    PyObject *rank = PyByteArray_FromStringAndSize(NULL, n);
    unsigned char *eq = NULL;
    PyObject *result = NULL;
    if (tokens == NULL || chosen == NULL || top == NULL || rank == NULL) goto done;
    for (i = 0; i < n; i++)
        if (in->rows[i].n_alts > widest) widest = in->rows[i].n_alts;
    eq = PyMem_Malloc(widest ? (size_t)widest : 1);
    if (eq == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    float *chosen_p = (float *)PyByteArray_AS_STRING(chosen);
    float *top_p = (float *)PyByteArray_AS_STRING(top);
    signed char *rank_p = (signed char *)PyByteArray_AS_STRING(rank);
    int compared = 0;
    TokenRef *refs = base == NULL ? NULL : (TokenRef *)PyBytes_AS_STRING(tokens);
    for (i = 0; i < n; i++) {
        Row *row = &in->rows[i];
        if (refs != NULL) {
            if (!utf8_valid((const unsigned char *)row->token.s, row->token.len))
                goto decline_or_error;
            /* an empty token may be the EMPTY default, which is not in the buffer */
            int64_t offset = row->token.len ? (int64_t)(row->token.s - base) : 0;
            refs[i] = (TokenRef){offset, row->token.len, row->token.escaped};
        } else {
            PyObject *token = decode_str(&row->token, decode);
            if (token == NULL) goto decline_or_error;
            PyList_SET_ITEM(tokens, i, token);
        }
        chosen_p[i] = row->lp;
        compared |= finish_row(row, in->alts + row->first_alt, k, top_p + i * k, rank_p + i, eq) == 2;
    }
    if ((compared || check_all) && !alternatives_valid(in)) goto decline_or_error;
    result = Py_BuildValue("nOOOO", end, tokens, chosen, top, rank);
    goto done;
decline_or_error:
    if (!PyErr_Occurred()) result = Py_NewRef(Py_None);
done:
    PyMem_Free(eq);
    Py_XDECREF(tokens);
    Py_XDECREF(chosen);
    Py_XDECREF(top);
    Py_XDECREF(rank);
    return result;
}

/* One way of reading a logprobs object: scan_logprobs (chat) or
 * scan_completion_logprobs; 1, 0 (decline) or -1 (memory error). */
typedef int (*ScanFn)(Cursor *c, Parsed *out);

/* scan_chat and scan_completions: the logprobs object at buf[start]; `lazy`
 * (optional, 0 by default): the tokens as a TokenRef table (build_result). */
static PyObject *scan_one(PyObject *args, ScanFn scan, const char *format, int check_all) {
    Py_buffer view;
    Py_ssize_t start, k;
    PyObject *decode, *result = NULL;
    int lazy = 0;
    if (!PyArg_ParseTuple(args, format, &view, &start, &k, &decode, &lazy)) return NULL;
    Parsed parsed = {0};
    if (start < 0 || start > view.len || k < 1 || k > 127) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    Cursor c = {(const char *)view.buf + start, (const char *)view.buf + view.len};
    int ok = scan(&c, &parsed);
    if (ok < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (ok == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = build_result(&parsed, k, c.p - (const char *)view.buf, decode, check_all,
                          lazy ? (const char *)view.buf : NULL);
done:
    PyMem_Free(parsed.rows);
    PyMem_Free(parsed.alts);
    PyBuffer_Release(&view);
    return result;
}

/* A stream's logprobs, one JSON object per chunk (bytes each), scanned as
 * one answer: the positions of every chunk in order. None when any chunk is
 * not sure (the Python path then decodes chunk by chunk and skips the bad). */
static PyObject *scan_many(PyObject *args, ScanFn scan, const char *format) {
    PyObject *items, *decode, *result = NULL;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, format, &PyList_Type, &items, &k, &decode)) return NULL;
    Parsed parsed = {0};
    if (k < 1 || k > 127) goto decline;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyBytes_Check(item)) goto decline;
        const char *buf = PyBytes_AS_STRING(item);
        Cursor c = {buf, buf + PyBytes_GET_SIZE(item)};
        int ok = scan(&c, &parsed);
        if (ok < 0) {
            PyErr_NoMemory();
            goto done;
        }
        skip_ws(&c);
        if (ok == 0 || c.p != c.end) goto decline;
    }
    result = build_result(&parsed, k, 0, decode, 1, NULL);
    goto done;
decline:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(parsed.rows);
    PyMem_Free(parsed.alts);
    return result;
}

static PyObject *scan_chat(PyObject *module, PyObject *args) {
    (void)module;
    return scan_one(args, scan_logprobs, "y*nnO|p:scan_chat", 0);
}

static PyObject *scan_chat_many(PyObject *module, PyObject *args) {
    (void)module;
    return scan_many(args, scan_logprobs, "O!nO:scan_chat_many");
}

/* Completions: every top_logprobs key is a dict key to the Python path, which
 * decodes (and so validates) them all: check_all. */
static PyObject *scan_completions(PyObject *module, PyObject *args) {
    (void)module;
    return scan_one(args, scan_completion_logprobs, "y*nnO|p:scan_completions", 1);
}

static PyObject *scan_completions_many(PyObject *module, PyObject *args) {
    (void)module;
    return scan_many(args, scan_completion_logprobs, "O!nO:scan_completions_many");
}

/* log p_T(chosen) of one position, `row` its K alternatives: one row of
 * monitor.calibration.aggregation.token_logprobs (the fitter's vectorised
 * numpy version), without its ~15 numpy calls' overhead. Same float64
 * operations in the same order; exp and log may differ from numpy's in the
 * last bit. The set renormalised over: the K alternatives with the chosen
 * token's own logprob in its column, plus the chosen token when it is
 * outside the top-K (rank -1); -inf entries drop out. */
static inline double row_logprob(float chosen, const float *row, signed char rank, Py_ssize_t k,
                                 double t) {
    double own = (double)chosen / t, m = -INFINITY, sum = 0.0;
    for (Py_ssize_t j = 0; j < k; j++) {
        double v = j == rank ? own : (double)row[j] / t;
        if (v > m) m = v;
    }
    double extra = rank < 0 || rank >= k ? own : -INFINITY;
    if (extra > m) m = extra;
    if (!isfinite(m)) m = 0.0;
    for (Py_ssize_t j = 0; j < k; j++) sum += exp((j == rank ? own : (double)row[j] / t) - m);
    sum += exp(extra - m);
    return own - (m + log(sum));
}

/* One generation's confidence from its positions' log p_T, without an array:
 * how 0 = mean of p, 1 = exp(min log p), 2 = exp(mean log p) (geometric mean).
 * NaN propagates as numpy's mean and min propagate it; the caller checks finiteness. */
static PyObject *window_confidence(PyObject *module, PyObject *args) {
    Py_buffer chosen, top, rank;
    Py_ssize_t k;
    double t;
    int how;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*y*ndi:window_confidence", &chosen, &top, &rank, &k, &t, &how))
        return NULL;
    Py_ssize_t n = chosen.len / (Py_ssize_t)sizeof(float);
    if (k < 1 || !(t > 0) || chosen.len != n * (Py_ssize_t)sizeof(float) ||
        top.len != n * k * (Py_ssize_t)sizeof(float) || rank.len != n || how < 0 || how > 2) {
        PyErr_SetString(PyExc_ValueError,
                        "window_confidence: shapes, temperature or how do not fit");
        PyBuffer_Release(&chosen);
        PyBuffer_Release(&top);
        PyBuffer_Release(&rank);
        return NULL;
    }
    const float *c = chosen.buf, *tp = top.buf;
    const signed char *r = rank.buf;
    double acc = how == 1 ? INFINITY : 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double lp = row_logprob(c[i], tp + i * k, r[i], k, t);
        if (how == 0) acc += exp(lp);
        else if (how == 2) acc += lp;
        else if (isnan(lp) || lp < acc) acc = lp; /* min: NaN wins, as in numpy */
        if (how == 1 && isnan(acc)) break;
    }
    PyBuffer_Release(&chosen);
    PyBuffer_Release(&top);
    PyBuffer_Release(&rank);
    if (n == 0) return PyFloat_FromDouble(NAN);
    if (how == 0) return PyFloat_FromDouble(acc / (double)n);
    return PyFloat_FromDouble(exp(how == 2 ? acc / (double)n : acc));
}

/* The strings of a TokenRef table that scan_chat or scan_completions built
 * (lazy) over `buf`: decoded as the eager scan would have. The table is
 * checked against the buffer, so no input reads outside it; a token that does
 * not decode (never, for a table the scan built over the same bytes) raises
 * ValueError. */
static PyObject *decode_tokens(PyObject *module, PyObject *args) {
    Py_buffer buf, table;
    PyObject *decode, *out = NULL;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*O:decode_tokens", &buf, &table, &decode)) return NULL;
    if (table.len % (Py_ssize_t)sizeof(TokenRef)) {
        PyErr_SetString(PyExc_ValueError, "not a token table");
        goto done;
    }
    Py_ssize_t n = table.len / (Py_ssize_t)sizeof(TokenRef);
    out = PyList_New(n);
    if (out == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        TokenRef ref;
        memcpy(&ref, (const char *)table.buf + i * (Py_ssize_t)sizeof(TokenRef), sizeof ref);
        /* the literal with its quotes, which an escaped token is decoded from;
         * an empty token reads nothing */
        int64_t size = (int64_t)buf.len;
        if (ref.len < 0 || (ref.len > 0 && (ref.offset < 1 || ref.len > size - ref.offset - 1))) {
            PyErr_SetString(PyExc_ValueError, "the token table does not fit the buffer");
            goto fail;
        }
        Str s = EMPTY;
        if (ref.len) s = (Str){(const char *)buf.buf + ref.offset, (Py_ssize_t)ref.len, ref.escaped != 0};
        PyObject *token = decode_str(&s, decode);
        if (token == NULL) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "token %zd does not decode", i);
            goto fail;
        }
        PyList_SET_ITEM(out, i, token);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&table);
    return out;
}

/* The address of a buffer's first byte: where a msgspec.Raw view sits in the
 * body (capture._spans), without numpy's ~1.5 us route to the same number. */
static PyObject *buffer_address(PyObject *module, PyObject *obj) {
    Py_buffer view;
    (void)module;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *out = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"scan_chat", scan_chat, METH_VARARGS,
     "scan_chat(buf, start, k, decode, lazy=False) -> (end, tokens, chosen, top, rank) | None"},
    {"scan_chat_many", scan_chat_many, METH_VARARGS,
     "scan_chat_many(items, k, decode) -> (0, tokens, chosen, top, rank) | None"},
    {"scan_completions", scan_completions, METH_VARARGS,
     "scan_completions(buf, start, k, decode, lazy=False) -> (end, tokens, chosen, top, rank) | None"},
    {"scan_completions_many", scan_completions_many, METH_VARARGS,
     "scan_completions_many(items, k, decode) -> (0, tokens, chosen, top, rank) | None"},
    {"buffer_address", buffer_address, METH_O, "buffer_address(buffer) -> int"},
    {"decode_tokens", decode_tokens, METH_VARARGS, "decode_tokens(buf, table, decode) -> list[str]"},
    {"window_confidence", window_confidence, METH_VARARGS,
     "window_confidence(chosen, top, rank, k, temperature, how) -> float"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_logprob_scan",
    "Native one-pass scan of chat logprobs into arrays (see capture.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__logprob_scan(void) {
    for (int i = 0; i < 0x20; i++) STRING_STOP[i] = 1;
    STRING_STOP['"'] = STRING_STOP['\\'] = 1;
    IS_WS[' '] = IS_WS['\t'] = IS_WS['\n'] = IS_WS['\r'] = 1;
    c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (c_locale == (locale_t)0) return PyErr_NoMemory();
    return PyModule_Create(&module);
}
