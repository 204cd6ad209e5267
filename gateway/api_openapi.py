"""The server API's OpenAPI 3.1 document (GET /api/v1/openapi.json), built once at import."""

from __future__ import annotations

from typing import Any, Final

import orjson

from roomcast import protocol as p
from roomcast.errors import ErrorCode


def _openapi() -> dict[str, Any]:
    err = {"$ref": "#/components/responses/Error"}
    seq = {"description": "The event's seq", "content": {"application/json": {"schema": {
        "type": "object", "required": ["seq"], "properties": {"seq": {"type": "integer", "minimum": 1}}}}}}
    room_id = {"name": "room_id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
    device_id = {"name": "device_id", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{8,128}$"}}
    errors = {"400": err, "401": err, "404": err, "409": err, "429": err, "503": err}

    def body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
        return {"required": required, "content": {"application/json": {"schema": schema}}}

    def ok(ref: str, code: str = "200", description: str = "OK") -> dict[str, Any]:
        return {code: {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}}

    obj = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "roomcast server API", "version": "1",
                 "description": "For game backends: rooms, events, kicks, disconnects, history. "
                                "See docs/server-api.md."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/rooms": {
                "post": {"operationId": "createRoom", "summary": "Create a room owned by the service",
                         "requestBody": body({"$ref": "#/components/schemas/NewRoom"}),
                         "responses": ok("#/components/schemas/Created", "201", "Created") | errors},
                "get": {"operationId": "listRooms", "summary": "List public rooms, newest first",
                        "parameters": [
                            {"name": "game_type", "in": "query", "schema": {"type": "string", "maxLength": 100}},
                            {"name": "status", "in": "query", "schema": {"$ref": "#/components/schemas/Status"}},
                            {"name": "limit", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                            {"name": "cursor", "in": "query", "schema": {"type": "string"}}],
                        "responses": ok("#/components/schemas/RoomList") | errors},
            },
            "/rooms/{room_id}": {
                "parameters": [room_id],
                "get": {"operationId": "getRoom", "summary": "A room and its participants",
                        "responses": ok("#/components/schemas/RoomInfo") | errors},
                "patch": {"operationId": "updateRoom", "summary": "Set status and/or merge-patch game_data "
                                                                  "(a state_change event)",
                          "requestBody": body({"type": "object", "properties": {
                              "status": {"enum": ["active", "waiting", "in_progress", "completed"]},
                              "patch": obj}}),
                          "responses": {"200": seq} | errors},
            },
            "/rooms/{room_id}/events": {
                "parameters": [room_id],
                "post": {"operationId": "publish", "summary": "Publish an event to every member",
                         "requestBody": body({"type": "object", "required": ["event_type"], "properties": {
                             "event_type": {"type": "string", "minLength": 1, "maxLength": 100,
                                            "description": "not one of the reserved types"},
                             "action": {"type": ["string", "null"], "maxLength": 255},
                             "payload": {"type": ["object", "null"]},
                             "idempotency_key": {
                                 "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$",
                                 "description": "the same key in the same room within IDEMPOTENCY_WINDOW returns "
                                                "the first seq and makes no second event"}}}),
                         "responses": {"200": seq} | errors},
                "get": {"operationId": "readEvents", "summary": "Events after `since` (stream, then Postgres)",
                        "parameters": [
                            {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
                            {"name": "limit", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
                        "responses": ok("#/components/schemas/Events") | errors},
            },
            "/rooms/{room_id}/close": {
                "parameters": [room_id],
                "post": {"operationId": "closeRoom", "summary": "Close the room (room_closed, members leave)",
                         "responses": {"200": seq} | errors},
            },
            "/rooms/{room_id}/participants/{device_id}": {
                "parameters": [room_id, device_id],
                "delete": {"operationId": "kick", "summary": "Kick a participant (participant_left, reason kicked)",
                           "responses": {"200": seq} | errors},
            },
            "/devices/{device_id}/disconnect": {
                "parameters": [device_id],
                "post": {"operationId": "disconnectDevice", "summary": "Close every socket of a device, cluster-wide",
                         "requestBody": body({"type": "object", "properties": {
                             "code": {"type": "integer", "minimum": 4000, "maximum": 4999, "default": 4000},
                             "reason": {"type": "string", "maxLength": 123}}}, required=False),
                         "responses": ok("#/components/schemas/Closed") | errors},
            },
            "/openapi.json": {
                "get": {"operationId": "openapi", "summary": "This document", "security": [],
                        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}},
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A secret from SERVER_API_KEYS"}},
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"enum": [c.value for c in ErrorCode]}, "message": {"type": "string"},
                    "retry_after_ms": {"type": "integer"}}},
                "Status": {"enum": list(p.ROOM_STATUSES)},
                "NewRoom": {"type": "object", "required": ["game_type"], "properties": {
                    "room_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                    "game_type": {"type": "string", "minLength": 1, "maxLength": 100},
                    "max_players": {"type": "integer", "minimum": 1, "maximum": 10000},
                    "game_data": obj,
                    "password": {"type": "string", "minLength": 1, "maxLength": 128},
                    "spectators_can_send": {"type": "boolean", "default": False}}},
                "Room": {"type": "object", "required": ["room_id", "game_type", "status", "max_players",
                                                        "current_players", "game_data", "created_at",
                                                        "created_by", "seq"],
                         "properties": {"room_id": {"type": "string"}, "game_type": {"type": "string"},
                                        "status": {"$ref": "#/components/schemas/Status"},
                                        "max_players": {"type": "integer"}, "current_players": {"type": "integer"},
                                        "game_data": obj, "created_at": {"type": "integer"},
                                        "created_by": {"type": "string"}, "seq": {"type": "integer"}}},
                "Participant": {"type": "object", "required": ["device_id", "role", "status", "joined_at"],
                                "properties": {"device_id": {"type": "string"},
                                               "user_id": {"type": ["string", "null"]},
                                               "role": {"enum": ["host", "player", "spectator"]},
                                               "status": {"enum": ["active", "disconnected"]},
                                               "joined_at": {"type": "integer"}}},
                "Created": {"type": "object", "required": ["room", "epoch"], "properties": {
                    "room": {"$ref": "#/components/schemas/Room"}, "epoch": {"type": "string"}}},
                "RoomList": {"type": "object", "required": ["rooms"], "properties": {
                    "rooms": {"type": "array", "items": {"$ref": "#/components/schemas/Room"}},
                    "next_cursor": {"type": ["string", "null"]}}},
                "RoomInfo": {"type": "object", "required": ["room", "participants"], "properties": {
                    "room": {"$ref": "#/components/schemas/Room"},
                    "participants": {"type": "array", "items": {"$ref": "#/components/schemas/Participant"}}}},
                "Events": {"type": "object", "required": ["events", "head"], "properties": {
                    "events": {"type": "array", "items": {"type": "object",
                                                          "description": "wire `event` messages (docs/protocol.md)"}},
                    "head": {"type": "integer"}}},
                "Closed": {"type": "object", "required": ["closed"], "properties": {
                    "closed": {"type": "integer", "minimum": 0}}},
            },
        },
    }


OPENAPI: Final = _openapi()
OPENAPI_JSON: Final = orjson.dumps(OPENAPI)
