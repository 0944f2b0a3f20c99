"""boot.py and main.py as a board stores them: comments and docstrings taken out.

MicroPython runs these two files from source, so their comments cost the board's filesystem
(the pyboard's 176 KiB holds the whole firmware with little to spare). Every line stays where
it was (a removed comment leaves an empty line, a docstring becomes `0`), so a traceback on
the board still points at the right line of the file in the repository. `slim()` checks that
the result means the same as the source: equal syntax trees once docstrings and bare
constants are set aside.
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
    slimmed = "".join(out)
    if _shape(ast.parse(text)) != _shape(ast.parse(slimmed)):
        raise ValueError("slimming changed what the file does")
    return slimmed.encode("utf-8")
