"""imgbuild.dataclass: the standard library's dataclasses, with __repr__,
__eq__ and __hash__ shared instead of generated per class (issue 12). Each
case builds the same class body with both decorators and compares what
their objects do."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import pytest

import imgbuild
from imgbuild import dataclass as ours

OPTIONS = [
    {},
    {"frozen": True},
    {"eq": False},
    {"repr": False},
    {"frozen": True, "eq": False},
    {"slots": True},
    {"frozen": True, "slots": True},
    {"order": True},
    {"unsafe_hash": True},
]


def both(body, **options):
    """The class ``body`` makes, once decorated by the standard library and once by ours."""
    return dataclasses.dataclass(body(), **options), ours.dataclass(body(), **options)


def point_body():
    class Point:
        x: int
        y: list = dataclasses.field(default_factory=list)
        note: str = dataclasses.field(default="", compare=False)
        secret: str = dataclasses.field(default="s", repr=False)
        tag: str = dataclasses.field(default="t", hash=False)

    return Point


def outcome(call):
    """What a call returns, or the type of what it raises."""
    try:
        return ("value", call())
    except Exception as error:  # noqa: BLE001 - the kind of failure is what is compared
        return ("raises", type(error))


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_objects_behave_as_the_standard_librarys(options):
    theirs, mine = both(point_body, **options)
    pairs = [((1,), (1,)), ((1,), (2,)), ((1, [1]), (1, [1])), ((1, [], "a"), (1, [], "b")), ((1, [], "", "x"), (1, [], "", "y"))]
    for left, right in pairs:
        a, b = theirs(*left), theirs(*right)
        c, d = mine(*left), mine(*right)
        # without repr: object's own, which names the object's address
        assert repr(c).split(" object at ")[0] == repr(a).split(" object at ")[0]
        assert (c == d) == (a == b) and (c != d) == (a != b)
        assert c.__eq__(a) is NotImplemented and a.__eq__(c) is NotImplemented or not options.get("eq", True)
        assert outcome(lambda c=c: hash(c))[0] == outcome(lambda a=a: hash(a))[0]  # hashable, or not, alike
    assert (mine.__hash__ is None) == (theirs.__hash__ is None)
    assert [f.name for f in dataclasses.fields(mine)] == [f.name for f in dataclasses.fields(theirs)]


@pytest.mark.parametrize("options", [{"frozen": True}, {"frozen": True, "slots": True}], ids=["frozen", "frozen,slots"])
def test_a_frozen_objects_hash_is_the_standard_one(options):
    def body():
        class Key:
            name: str
            size: int = 0
            note: str = dataclasses.field(default="", compare=False)
            tag: str = dataclasses.field(default="", hash=False)

        return Key

    theirs, mine = both(body, **options)
    for values in (("a",), ("a", 3), ("a", 3, "n"), ("a", 3, "n", "t")):
        assert hash(mine(*values)) == hash(theirs(*values))
    assert hash(mine("a", 3, "n", "t")) == hash(mine("a", 3, "m", "u"))  # note and tag are not hashed
    assert {mine("a"), mine("a"), mine("b")} == {mine("a"), mine("b")}


def test_a_subclass_object_is_not_equal_to_its_base_class_object():
    theirs, mine = both(point_body, frozen=True)

    class Sub(mine):
        pass

    class TheirSub(theirs):
        pass

    assert (Sub(1) == mine(1)) is (TheirSub(1) == theirs(1)) is False
    assert (Sub(1) == Sub(1)) is (TheirSub(1) == TheirSub(1)) is True
    assert repr(Sub(1)) == repr(TheirSub(1)).replace("TheirSub", "Sub")


def test_methods_the_class_defines_are_kept():
    def body():
        class Named:
            name: str

            def __repr__(self):
                return "mine"

            def __eq__(self, other):
                return True

            def __hash__(self):
                return 7

        return Named

    theirs, mine = both(body, frozen=True)
    assert (repr(mine("a")), mine("a") == mine("b"), hash(mine("a"))) == (
        repr(theirs("a")), theirs("a") == theirs("b"), hash(theirs("a"))
    )


def test_a_class_that_defines_eq_but_not_hash_gets_the_standard_hash():
    def body():
        class Loose:
            name: str

            def __eq__(self, other):
                return isinstance(other, Loose)

        return Loose

    for options in ({}, {"frozen": True}):
        theirs, mine = both(body, **options)
        assert (mine.__hash__ is None) == (theirs.__hash__ is None)
        if theirs.__hash__ is not None:
            assert hash(mine("a")) == hash(theirs("a"))


def test_a_value_that_contains_itself_is_shown_with_dots():
    def body():
        class Node:
            children: list

        return Node

    theirs, mine = both(body)
    a, c = theirs([]), mine([])
    a.children.append(a)
    c.children.append(c)
    assert repr(c) == repr(a) and repr(c).endswith("Node(children=[...])")


def test_every_imgbuild_dataclass_is_made_by_ours():
    # A module that went back to the standard decorator would compile the
    # three methods again for each of its classes: the saving is per class.
    made = []
    for module in pkgutil.walk_packages(imgbuild.__path__, "imgbuild."):
        if module.name == "imgbuild.__main__":
            continue  # importing it runs the CLI
        loaded = importlib.import_module(module.name)
        for value in vars(loaded).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == module.name:
                made.append(value)
    assert len(made) > 100
    # ours passes eq=False to the standard decorator and adds the shared __eq__
    standard = [f"{c.__module__}.{c.__qualname__}" for c in made if c.__dataclass_params__.eq]
    assert standard == []
