"""SimpleDB's Select language for the SimpleDB test server: parse an
expression, then run it over one domain's items.

The grammar is the part of AWS's that the job store needs (see
docs/simpledb-test-server.md):

    select  ( * | itemName() | count(*) | attr [, attr ...] )
    from    domain
    [where  predicate-expression]
    [order by ( attr | itemName() ) [asc | desc]]
    [limit  N]

Predicates: attr (=, !=, <, >, <=, >=) 'value'; attr [not] like 'pat%';
attr between 'a' and 'b'; attr in ('a', ...); attr is [not] null;
every(attr) <op> 'value'; itemName() <op> 'value'; combined with not, and,
or and parentheses. Values are quoted with ' or " (a quote inside is
doubled); names that are not plain identifiers, or are keywords, are quoted
with backticks (a backtick inside is doubled). Every comparison is
lexicographic on the strings, as on AWS. An attribute with several values
matches a predicate if any value does; every() needs all of them to.

Errors are raised as `SelectError(code, message)` with SimpleDB's codes.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

KEYWORDS = frozenset({"select", "from", "where", "and", "or", "not", "like", "between",
                      "in", "is", "null", "order", "by", "asc", "desc", "limit", "every",
                      "intersection"})
DEFAULT_PAGE_ITEMS = 100
MAX_LIMIT = 2500

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<backtick>`(?:[^`]|``)*`)
  | (?P<squote>'(?:[^']|'')*')
  | (?P<dquote>"(?:[^"]|"")*")
  | (?P<op>!=|<=|>=|=|<|>)
  | (?P<punct>[(),*])
  | (?P<word>[A-Za-z_$][A-Za-z0-9_$]*)
  | (?P<number>[0-9]+)
""", re.VERBOSE)

# A predicate sees the item's name and its attributes (name -> values).
Match = Callable[[str, dict[str, list[str]]], bool]


class SelectError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> SelectError:
    return SelectError("InvalidQueryExpression", f"The specified query expression syntax is "
                                                 f"not valid: {message}")


@dataclasses.dataclass(frozen=True)
class Token:
    kind: str   # "name" (quoted or plain word), "value", "op", "punct", "number"
    text: str
    quoted: bool = False

    def is_word(self, word: str) -> bool:
        return self.kind == "name" and not self.quoted and self.text.lower() == word


def tokenize(expression: str) -> list[Token]:
    """The tokens of `expression`. Raises SelectError(InvalidQueryExpression)."""
    tokens, position = [], 0
    while position < len(expression):
        found = _TOKEN.match(expression, position)
        if found is None:
            raise _invalid(f"unexpected {expression[position:position + 10]!r}")
        position = found.end()
        kind, text = found.lastgroup, found.group()
        if kind == "space":
            continue
        if kind == "backtick":
            tokens.append(Token("name", text[1:-1].replace("``", "`"), quoted=True))
        elif kind in ("squote", "dquote"):
            quote = text[0]
            tokens.append(Token("value", text[1:-1].replace(quote * 2, quote)))
        elif kind == "word":
            tokens.append(Token("name", text))
        else:
            tokens.append(Token(kind, text))
    return tokens


@dataclasses.dataclass
class Query:
    """A parsed select. `output` is "*", "itemName()", "count(*)" or a list of
    attribute names; `order_by` is an attribute name, ITEM_NAME or None."""

    output: object
    domain: str
    where: Match | None
    order_by: str | None
    descending: bool
    limit: int | None
    # Attributes named by a predicate other than `is null`: what may be sorted on.
    sortable: frozenset[str]


ITEM_NAME = "itemName()"


class _Parser:
    def __init__(self, expression: str):
        self.tokens = tokenize(expression)
        self.at = 0
        self.sortable: set[str] = set()

    # --- token helpers ---

    def peek(self, ahead: int = 0) -> Token | None:
        index = self.at + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise _invalid("unexpected end of expression")
        self.at += 1
        return token

    def accept_word(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.is_word(word):
            self.at += 1
            return True
        return False

    def expect_word(self, word: str) -> None:
        if not self.accept_word(word):
            raise _invalid(f"expected {word!r}")

    def accept_punct(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "punct" and token.text == text:
            self.at += 1
            return True
        return False

    def expect_punct(self, text: str) -> None:
        if not self.accept_punct(text):
            raise _invalid(f"expected {text!r}")

    def name(self) -> str:
        token = self.take()
        if token.kind != "name" or (not token.quoted and token.text.lower() in KEYWORDS):
            raise _invalid(f"expected a name, got {token.text!r}")
        return token.text

    def value(self) -> str:
        token = self.take()
        if token.kind != "value":
            raise _invalid(f"expected a quoted value, got {token.text!r}")
        return token.text

    def function(self, word: str) -> bool:
        """True (and consumed) if the next tokens are `word(`."""
        token, after = self.peek(), self.peek(1)
        if token is not None and token.is_word(word.lower()) and after is not None \
                and after.kind == "punct" and after.text == "(":
            self.at += 2
            return True
        return False

    # --- the grammar ---

    def query(self) -> Query:
        self.expect_word("select")
        output = self.output()
        self.expect_word("from")
        domain = self.name()
        where = None
        if self.accept_word("where"):
            where = self.expression()
        order_by, descending = None, False
        if self.accept_word("order"):
            self.expect_word("by")
            order_by = ITEM_NAME if self.function("itemname") else self.name()
            if order_by == ITEM_NAME:
                self.expect_punct(")")
            if self.accept_word("desc"):
                descending = True
            else:
                self.accept_word("asc")
        limit = None
        if self.accept_word("limit"):
            token = self.take()
            if token.kind != "number":
                raise _invalid("limit needs a number")
            limit = int(token.text)
            if not 1 <= limit <= MAX_LIMIT:
                raise SelectError("InvalidParameterValue",
                                  f"Value ({limit}) for parameter Limit is invalid. "
                                  f"Limit must be between 1 and {MAX_LIMIT}.")
        if self.peek() is not None:
            raise _invalid(f"unexpected {self.peek().text!r}")
        return Query(output, domain, where, order_by, descending, limit,
                     frozenset(self.sortable))

    def output(self):
        if self.accept_punct("*"):
            return "*"
        if self.function("itemname"):
            self.expect_punct(")")
            return ITEM_NAME
        if self.function("count"):
            self.expect_punct("*")
            self.expect_punct(")")
            return "count(*)"
        names = [self.name()]
        while self.accept_punct(","):
            names.append(self.name())
        return names

    def expression(self) -> Match:
        terms = [self.term()]
        while self.accept_word("or"):
            terms.append(self.term())
        if len(terms) == 1:
            return terms[0]
        return lambda item, attrs: any(term(item, attrs) for term in terms)

    def term(self) -> Match:
        if self.peek() is not None and self.peek().is_word("intersection"):
            raise _invalid("intersection is not supported by this server")
        factors = [self.factor()]
        while self.accept_word("and"):
            factors.append(self.factor())
        if len(factors) == 1:
            return factors[0]
        return lambda item, attrs: all(factor(item, attrs) for factor in factors)

    def factor(self) -> Match:
        if self.accept_word("not"):
            inner = self.factor()
            return lambda item, attrs: not inner(item, attrs)
        if self.accept_punct("("):
            inner = self.expression()
            self.expect_punct(")")
            return inner
        return self.predicate()

    def predicate(self) -> Match:
        every = False
        if self.function("itemname"):
            self.expect_punct(")")
            subject = ITEM_NAME
        else:
            every = self.function("every")
            subject = self.name()
            if every:
                self.expect_punct(")")
        test, kind = self.comparison()
        if kind != "null":
            self.sortable.add(subject)
        return _predicate(subject, every, test, kind)

    def comparison(self) -> tuple[Callable[[str], bool] | None, str]:
        """(test of one value, kind): kind is "value", "null" or "not null"."""
        token = self.take()
        if token.kind == "op":
            operand = self.value()
            return _OPERATORS[token.text](operand), "value"
        if token.is_word("is"):
            negated = self.accept_word("not")
            self.expect_word("null")
            return None, "not null" if negated else "null"
        negated = token.is_word("not")
        if negated:
            token = self.take()
        if token.is_word("like"):
            pattern = _like_pattern(self.value())
            if negated:
                return (lambda v: pattern.fullmatch(v) is None), "value"
            return (lambda v: pattern.fullmatch(v) is not None), "value"
        if negated:
            raise _invalid("'not' here must be followed by 'like'")
        if token.is_word("between"):
            low = self.value()
            self.expect_word("and")
            high = self.value()
            return (lambda v: low <= v <= high), "value"
        if token.is_word("in"):
            self.expect_punct("(")
            choices = {self.value()}
            while self.accept_punct(","):
                choices.add(self.value())
            self.expect_punct(")")
            return (lambda v: v in choices), "value"
        raise _invalid(f"expected a comparison, got {token.text!r}")


_OPERATORS: dict[str, Callable[[str], Callable[[str], bool]]] = {
    "=": lambda c: lambda v: v == c,
    "!=": lambda c: lambda v: v != c,
    "<": lambda c: lambda v: v < c,
    ">": lambda c: lambda v: v > c,
    "<=": lambda c: lambda v: v <= c,
    ">=": lambda c: lambda v: v >= c,
}


def _like_pattern(text: str) -> re.Pattern:
    """'%' matches any run of characters; a backslash makes the next one literal."""
    parts, escaped = [], False
    for char in text:
        if escaped:
            parts.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            parts.append(".*")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def _predicate(subject: str, every: bool, test: Callable[[str], bool] | None,
               kind: str) -> Match:
    def match(item: str, attrs: dict[str, list[str]]) -> bool:
        values = [item] if subject == ITEM_NAME else attrs.get(subject, [])
        if kind == "null":
            return not values
        if kind == "not null":
            return bool(values)
        # An item without the attribute matches no comparison, not even !=.
        if not values:
            return False
        if every:
            return all(test(v) for v in values)
        return any(test(v) for v in values)
    return match


def parse(expression: str) -> Query:
    """Parse a select expression. Raises SelectError."""
    query = _Parser(expression).query()
    if query.order_by not in (None, ITEM_NAME) and query.order_by not in query.sortable:
        raise SelectError("InvalidSortExpression",
                          "The sort attribute must be present in at least one of the "
                          "predicates, and the predicate cannot include the is null "
                          "comparison operator.")
    return query


def _sort_key(query: Query, name: str, attrs: dict[str, list[str]]) -> list[str]:
    """Where an item falls in the result order: the sort value, then the item name."""
    if query.order_by in (None, ITEM_NAME):
        return [name]
    # An attribute with several values sorts by its smallest.
    return [min(attrs[query.order_by]), name]


def run(query: Query, items: dict[str, dict[str, list[str]]], after: list[str] | None,
        max_response_bytes: int) -> tuple[list[tuple[str, dict[str, list[str]]]], list[str] | None]:
    """One page of `query` over `items`, starting after the sort key `after`.

    Returns (rows as (item name, attributes to show), the sort key of the last
    row when more rows follow, else None). The page ends at the query's limit
    (default 100 items; count(*) without a limit counts everything) or when
    it would pass `max_response_bytes`, whichever comes first.
    """
    matched = []
    for name, attrs in items.items():
        if query.where is not None and not query.where(name, attrs):
            continue
        if query.order_by not in (None, ITEM_NAME) and not attrs.get(query.order_by):
            continue
        matched.append((_sort_key(query, name, attrs), name, attrs))
    matched.sort(key=lambda row: row[0], reverse=query.descending)
    if after is not None:
        matched = [row for row in matched
                   if (row[0] < after if query.descending else row[0] > after)]
    counting = query.output == "count(*)"
    page_items = query.limit or (len(matched) if counting else DEFAULT_PAGE_ITEMS)
    if counting:
        # A count's answer is one number: no response-size cut, only the limit.
        counted = matched[:page_items]
        next_after = counted[-1][0] if len(counted) < len(matched) else None
        return [("Domain", {"Count": [str(len(counted))]})], next_after
    page, size = [], 0
    for key, name, attrs in matched[:page_items]:
        shown = _shown(query, attrs)
        row_bytes = len(name.encode()) + sum(
            len(attr.encode()) + len(v.encode()) for attr, vs in shown.items() for v in vs)
        if page and size + row_bytes > max_response_bytes:
            break
        page.append((key, name, shown))
        size += row_bytes
    more = len(page) < len(matched)
    next_after = page[-1][0] if more and page else None
    return [(name, shown) for _, name, shown in page], next_after


def _shown(query: Query, attrs: dict[str, list[str]]) -> dict[str, list[str]]:
    if query.output == "*":
        return attrs
    if query.output in (ITEM_NAME, "count(*)"):
        return {}
    return {name: attrs[name] for name in query.output if name in attrs}
