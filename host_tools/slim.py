"""boot.py and main.py as a board stores them: comments and docstrings taken out, one space
of indentation a block.

MicroPython runs these two files from source, so their comments and indentation cost the
board's filesystem (the pyboard's 176 KiB holds the whole firmware with little to spare).
Every line stays where it was (a removed comment leaves an empty line, a docstring becomes
`0`, only leading spaces shrink), so a traceback on the board still points at the right line
of the file in the repository. `slim()` checks that the result means the same as the
source: equal syntax trees once docstrings and bare constants are set aside.
"""

import ast
import io
import tokenize


def _is_docstring(tok, prev_type):
    # a string that is a whole statement: at the start of a line, after an indent or a newline
    return tok.type == tokenize.STRING and prev_type in (None, tokenize.INDENT, tokenize.DEDENT,
                                                         tokenize.NEWLINE, tokenize.NL)


def _shape(tree):
    """The tree without statements that are a bare constant (docstrings, the `0`s)."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list):
                body[:] = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return ast.dump(tree, include_attributes=False)


def _one_space_indents(text):
    """Each block one space deeper than its parent instead of four: a line's leading spaces
    cost the board's flash as much as its code. A continuation line (inside brackets) gets
    one more than its statement; lines inside a multi-line string are left alone."""
    lines = text.splitlines(keepends=True)
    new = {}            # row -> leading spaces
    inside = set()      # rows that start inside a multi-line token
    depth = 0
    statement = True    # the next token starts a statement
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.NEWLINE:
            statement = True
        elif tok.type not in (tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER):
            r = tok.start[0]
            if r not in new and r not in inside and not tok.line[:tok.start[1]].strip():
                new[r] = depth if statement else depth + 1
            statement = False
            inside.update(range(r + 1, tok.end[0] + 1))
    out = []
    for row, line in enumerate(lines, 1):
        if row in new and row not in inside:
            line = " " * new[row] + line.lstrip(" ")
        out.append(line)
    return "".join(out)


def slim(source):
    """source (bytes) without comments and docstrings, line for line; ValueError if the result
    would not mean the same."""
    text = source.decode("utf-8")
    lines = text.splitlines(keepends=True)
    cut = {}            # row (1-based) -> list of (start_col, end_col or None, replacement)
    prev = None
    toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    for i, tok in enumerate(toks):
        if tok.type == tokenize.COMMENT:
            cut.setdefault(tok.start[0], []).append((tok.start[1], None, ""))
        elif _is_docstring(tok, prev) and toks[i + 1].type in (tokenize.NEWLINE, tokenize.COMMENT):
            (r0, c0), (r1, c1) = tok.start, tok.end
            if r0 == r1:
                cut.setdefault(r0, []).append((c0, c1, "0"))
            else:
                cut.setdefault(r0, []).append((c0, None, "0"))
                for r in range(r0 + 1, r1):
                    cut.setdefault(r, []).append((0, None, ""))
                cut.setdefault(r1, []).append((0, c1, ""))
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            prev = tok.type
    out = []
    for row, line in enumerate(lines, 1):
        body = line.rstrip("\r\n")
        for start, end, repl in sorted(cut.get(row, ()), reverse=True):
            body = body[:start] + repl + (body[end:] if end is not None else "")
        body = body.rstrip()
        out.append((body + "\n") if body.strip() else "\n")
    slimmed = _one_space_indents("".join(out))
    if _shape(ast.parse(text)) != _shape(ast.parse(slimmed)):
        raise ValueError("slimming changed what the file does")
    return slimmed.encode("utf-8")
