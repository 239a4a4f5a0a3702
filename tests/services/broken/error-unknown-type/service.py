"""Broken on purpose (error-unknown-type): it answers a message of an unknown type with its own error code."""

from base import Service, main


class OwnCode(Service):
    def error(self, code, detail):
        super().error("unsupported_message" if code == "unknown_type" else code, detail)


main(OwnCode())
