"""Twenty varied JSON schemas (nested objects, arrays, enums, bounded numbers, required and
optional fields) with a question each, for the structured-output API tests. Strings and
arrays are bounded so a small model finishes well inside the token limit."""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "minLength": 1, "maxLength": 16}


def obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("Describe a person as JSON.", obj(["name", "age"], name=NAME, age={"type": "integer"})),
    (
        "Give the weather in Paris as JSON.",
        obj(
            ["city", "celsius"],
            city=NAME,
            celsius={"type": "number", "minimum": -50, "maximum": 60},
            sunny={"type": "boolean"},
        ),
    ),
    (
        "Pick a colour for a car.",
        obj(["colour"], colour={"enum": ["red", "green", "blue", "black"]}),
    ),
    (
        "List three fruits as JSON.",
        obj(["fruits"], fruits={"type": "array", "items": NAME, "minItems": 1, "maxItems": 3}),
    ),
    (
        "Describe a book with its author.",
        obj(
            ["title", "author"],
            title=NAME,
            author=obj(["name"], name=NAME, born={"type": "integer", "minimum": 1000}),
        ),
    ),
    (
        "Rate a movie from 1 to 5.",
        obj(["movie", "stars"], movie=NAME, stars={"type": "integer", "minimum": 1, "maximum": 5}),
    ),
    (
        "Give a point on a map.",
        obj(
            ["lat", "lon"],
            lat={"type": "number", "minimum": -90, "maximum": 90},
            lon={"type": "number", "minimum": -180, "maximum": 180},
        ),
    ),
    (
        "Is water wet? Answer as JSON.",
        obj(["answer", "confidence"], answer={"type": "boolean"}, confidence={"type": "number"}),
    ),
    (
        "Create a to-do list with two tasks.",
        obj(
            ["tasks"],
            tasks={
                "type": "array",
                "items": obj(["title", "done"], title=NAME, done={"type": "boolean"}),
                "minItems": 1,
                "maxItems": 2,
            },
        ),
    ),
    ("Name a planet.", obj(["planet"], planet={"enum": ["Mercury", "Venus", "Earth", "Mars"]})),
    (
        "Give a product with a price in euros.",
        obj(
            ["name", "price"],
            name=NAME,
            price={"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
            tags={"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
        ),
    ),
    ("Write a greeting.", obj(["greeting"], greeting={"type": "string", "maxLength": 30})),
    (
        "Describe a dog.",
        obj(
            ["name", "breed", "age"],
            name=NAME,
            breed={"enum": ["poodle", "beagle", "collie"]},
            age={"type": "integer", "minimum": 0, "maximum": 25},
        ),
    ),
    (
        "Give the size of a box in centimetres.",
        obj(
            ["size"],
            size=obj(
                ["width", "height"],
                width={"type": "integer", "minimum": 1, "maximum": 100},
                height={"type": "integer", "minimum": 1, "maximum": 100},
            ),
        ),
    ),
    (
        "Tell me a number between 10 and 20.",
        obj(["number"], number={"type": "integer", "minimum": 10, "maximum": 20}),
    ),
    (
        "Describe a city with its country.",
        obj(
            ["city", "country"],
            city=NAME,
            country=NAME,
            population={"type": "integer", "minimum": 0},
        ),
    ),
    (
        "Give two primary colours.",
        {
            "type": "array",
            "items": {"enum": ["red", "yellow", "blue"]},
            "minItems": 2,
            "maxItems": 2,
        },
    ),
    (
        "Give an email address for Alice.",
        obj(
            ["user", "email"],
            user=NAME,
            email={"type": "string", "pattern": r"^[a-z]+@[a-z]+\.com$"},
        ),
    ),
    (
        "Describe the day's schedule.",
        obj(
            ["day", "events"],
            day={"enum": ["monday", "tuesday", "friday"]},
            events={
                "type": "array",
                "items": obj(["hour"], hour={"type": "integer", "minimum": 0, "maximum": 23}),
                "maxItems": 2,
            },
        ),
    ),
    (
        "Describe a cat, maybe with a nickname.",
        obj(
            ["name"],
            name=NAME,
            nickname={"anyOf": [NAME, {"type": "null"}]},
            indoor={"type": "boolean"},
        ),
    ),
]
