"""The template face of generator.formatting: `{% load generator_format %}`."""

from __future__ import annotations

from django import template

from generator import formatting

register = template.Library()

register.filter("thousands", formatting.thousands)
register.filter("speed", formatting.speed)
register.filter("duration", formatting.duration)
register.filter("timestamp", formatting.timestamp)
