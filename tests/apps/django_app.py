"""Views and URLconf for the Django test (tests/test_frameworks.py); the
test configures settings with ROOT_URLCONF = "apps.django_app"."""

import json

from django.http import (HttpResponse, JsonResponse,
                         StreamingHttpResponse)
from django.urls import path


def hello(request, name):
    return HttpResponse("hello %s" % name, content_type="text/plain")


def echo_json(request):
    if request.method != "POST":
        return HttpResponse(status=405)
    data = json.loads(request.body)
    return JsonResponse({"received": data, "method": request.method,
                         "length": len(request.body)})


def stream(request):
    count = int(request.GET.get("n", "5"))
    return StreamingHttpResponse(("line %d\n" % i for i in range(count)),
                                 content_type="text/plain")


def meta(request):
    return JsonResponse({key: request.META.get(key) for key in (
        "SERVER_PORT", "REMOTE_ADDR", "PATH_INFO", "QUERY_STRING",
        "wsgi.url_scheme")})


urlpatterns = [
    path("hello/<str:name>/", hello),
    path("json/", echo_json),
    path("stream/", stream),
    path("meta/", meta),
]
