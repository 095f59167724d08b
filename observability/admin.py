"""The monitoring page in the admin: /admin/monitoring/ (name "admin:monitoring").

The page is not a model's, so it is added to the admin site's own URLs (staff only,
through ``admin_view``) and linked from the admin's index (templates/admin/index.html).
"""

from __future__ import annotations

import functools

from django.contrib import admin
from django.urls import path

from . import views


def _with_monitoring(get_urls):
    @functools.wraps(get_urls)
    def urls():
        page = functools.partial(views.monitoring, admin_site=admin.site)
        return [path("monitoring/", admin.site.admin_view(page), name="monitoring"), *get_urls()]

    return urls


# The admin site's URLs are read when config/urls.py is imported, after every admin
# module (this one included) has been loaded.
admin.site.get_urls = _with_monitoring(admin.site.get_urls)
