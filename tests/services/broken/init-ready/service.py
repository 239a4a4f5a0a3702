"""Broken on purpose (init-ready): READY lists its capabilities unsorted."""

from base import Service, main


class Unsorted(Service):
    capabilities = ["snapshot", "configure"]


main(Unsorted())
