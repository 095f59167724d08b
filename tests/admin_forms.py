"""Post an admin add/change form the way a browser would, starting from the rendered page."""
from __future__ import annotations

from typing import Any

from django import forms


def _as_post(field: forms.Field, value: Any) -> str | None:
    if isinstance(field, forms.BooleanField):
        return "on" if value else None
    if value is None:
        return ""
    return str(value)


def post_data(response, **overrides: Any) -> dict[str, str]:
    """The values of every form on the page (main form, inline forms, management forms),
    as a browser would submit them unchanged; ``overrides`` replace or (None) drop keys."""
    context = response.context
    forms_on_page = [context["adminform"].form]
    data: dict[str, str] = {}
    for inline in context["inline_admin_formsets"]:
        formset = inline.formset
        management = formset.management_form
        for name in management.fields:
            data[management.add_prefix(name)] = str(management[name].value())
        forms_on_page.extend(formset.forms)
    for form in forms_on_page:
        for name, field in form.fields.items():
            value = _as_post(field, form[name].value())
            if value is not None:
                data[form.add_prefix(name)] = value
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def inline_prefix(response, model) -> str:
    """The form prefix of the inline for ``model`` on the page (e.g. "triggers")."""
    for inline in response.context["inline_admin_formsets"]:
        if inline.formset.model is model:
            return inline.formset.prefix
    raise LookupError(f"no inline for {model.__name__} on the page")
