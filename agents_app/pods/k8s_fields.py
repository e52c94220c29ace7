"""Validation of a pool's Kubernetes fields (`AgentPool.k8s_*`), shared by the model (and so
the admin) and the pool API. A value refused here is one the API server would refuse when the
reconciler creates a pod, long after the admin saved it: checking it at save time turns a
pod that never starts into a clear 400 naming the field.

Names follow Kubernetes' own rules (k8s.io/apimachinery/pkg/util/validation): namespaces are
DNS-1123 labels, service accounts DNS-1123 subdomains; quantities are parsed by the official
client's `parse_quantity`, the same reading the API server does.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_IMAGE = re.compile(r"[^\s]+")


def validate_dns1123_label(value: str) -> None:
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        raise ValidationError(
            f"'{value}' is not a valid Kubernetes name: at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (DNS-1123 label)"
        )


def validate_dns1123_subdomain(value: str) -> None:
    if value and (len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value)):
        raise ValidationError(
            f"'{value}' is not a valid Kubernetes name: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters (DNS-1123 subdomain)"
        )


def validate_image(value: str) -> None:
    if not _IMAGE.fullmatch(value):
        raise ValidationError("must be a container image reference without spaces, e.g. registry.example/iac-agent:1.4")


def parse_positive_quantity(value: str) -> Decimal:
    from kubernetes.utils.quantity import parse_quantity  # the client is heavy: only when a pool is saved

    try:
        number = parse_quantity(value)
    except (ValueError, ArithmeticError) as exc:
        raise ValidationError(
            f"'{value}' is not a Kubernetes quantity (e.g. 500m or 2 for CPU, 512Mi or 2Gi for memory)"
        ) from exc
    if number <= 0:
        raise ValidationError(f"'{value}' must be greater than zero (leave it empty for none)")
    return number


def validate_quantity(value: str) -> None:
    if value:
        parse_positive_quantity(value)


def validate_node_selector(value: Any) -> None:
    """A JSON object of label key -> label value, both strings, as a pod's nodeSelector."""
    if not isinstance(value, dict):
        raise ValidationError('must be a JSON object of label names to values, e.g. {"disktype": "ssd"}')
    for key, label in value.items():
        prefix, _, name = str(key).rpartition("/")
        if (
            len(name) > 63 or not _LABEL_NAME.fullmatch(name)
            or ("/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)))
        ):
            raise ValidationError(f"'{key}' is not a valid label name (e.g. disktype or kubernetes.io/arch)")
        if not isinstance(label, str):
            raise ValidationError(f"the value of '{key}' must be a string, not {type(label).__name__}")
        if len(label) > 63 or (label and not _LABEL_NAME.fullmatch(label)):
            raise ValidationError(
                f"'{label}' (for '{key}') is not a valid label value: at most 63 letters, digits, '-', '_' "
                "and '.', starting and ending with a letter or digit"
            )


def resource_problems(values: dict[str, str]) -> dict[str, str]:
    """Requests above their limits, {field: message}. `values` maps the k8s_*_request and
    k8s_*_limit fields to their (each already valid) quantities."""
    problems = {}
    for resource in ("cpu", "memory"):
        request, limit = values.get(f"k8s_{resource}_request"), values.get(f"k8s_{resource}_limit")
        if request and limit:
            try:
                over = parse_positive_quantity(request) > parse_positive_quantity(limit)
            except ValidationError:
                continue  # reported by the field's own validator
            if over:
                problems[f"k8s_{resource}_request"] = (
                    f"the {resource} request ({request}) must not exceed the {resource} limit ({limit})"
                )
    return problems
