/*
 * text.c - the rule for text a license carries and tools print (the
 * licensee): well-formed UTF-8 with nothing that could change how a
 * terminal or a UI shows the surrounding text. Control characters move the
 * cursor or end a line; bidirectional overrides and isolates reorder what
 * follows them ("Trojan Source", CVE-2021-42574), so a name could make a
 * message or a log line read as something else. The tool refuses such a
 * name when issuing and the verifier refuses it when decoding, so that no
 * program ever has to escape it.
 */
#include "license.h"

#include <stdio.h>

/* Code points refused although well-formed: C1 controls and the Unicode
 * bidirectional formatting and line-breaking characters. */
static int refused(uint32_t c)
{
    return (c >= 0x80 && c <= 0x9f) || c == 0x061c || c == 0x200e || c == 0x200f ||
           (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069) || c == 0x2028 ||
           c == 0x2029;
}

/* Decodes one UTF-8 sequence at s[0..n); its length, or 0 when ill-formed. */
static size_t decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    const unsigned char b = s[0];
    size_t len;
    uint32_t c, min;
    if (b < 0x80) {
        *cp = b;
        return 1;
    } else if (b >= 0xc2 && b <= 0xdf) {
        len = 2, c = b & 0x1f, min = 0x80;
    } else if (b >= 0xe0 && b <= 0xef) {
        len = 3, c = b & 0x0f, min = 0x800;
    } else if (b >= 0xf0 && b <= 0xf4) {
        len = 4, c = b & 0x07, min = 0x10000;
    } else {
        return 0; /* a continuation byte, 0xc0/0xc1 (overlong) or above U+10FFFF */
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

int lml_text_check(const char *s, size_t n, char *why, size_t why_len)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t c;
        size_t k = decode(u + i, n - i, &c);
        if (k == 0) {
            snprintf(why, why_len, "is not valid UTF-8 (byte 0x%02x at offset %zu)", u[i], i);
            return -1;
        }
        if (c < 0x20 || c == 0x7f || refused(c)) {
            snprintf(why, why_len,
                     "contains U+%04X at offset %zu (control, bidirectional or line "
                     "separator characters are not allowed)",
                     (unsigned)c, i);
            return -1;
        }
        i += k;
    }
    return 0;
}
