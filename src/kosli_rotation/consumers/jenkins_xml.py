"""The config.xml of a Jenkins "Secret text" credential, for the ``jenkins_credential`` kind: read it, check it is
Secret text, build a new one, or put a new secret into the one Jenkins returned (keeping everything else)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from kosli_rotation.errors import ConsumerError

SECRET_TEXT_CLASS = "org.jenkinsci.plugins.plaincredentials.impl.StringCredentialsImpl"


def _parse_xml(text: str) -> ET.Element:
    # XStream may declare XML 1.1; the declaration carries nothing we need.
    return ET.fromstring(re.sub(r"^\s*<\?xml[^>]*\?>", "", text))


def new_credential_xml(credential_id: str, description: str, key: str) -> bytes:
    """A global Secret text credential, for ``createCredentials``."""
    element = ET.Element(SECRET_TEXT_CLASS)
    for tag, text in (("scope", "GLOBAL"), ("id", credential_id), ("description", description), ("secret", key)):
        ET.SubElement(element, tag).text = text
    return ET.tostring(element, encoding="utf-8")


def secret_text_element(text: str, *, consumer: str, credential: str) -> ET.Element:
    """The credential's root element; a ``ConsumerError`` about ``consumer`` if it is not XML or not Secret text
    (``credential`` names it in the message: "credential <id> in <store>")."""
    try:
        element = _parse_xml(text)
    except ET.ParseError as error:
        raise ConsumerError(consumer, f"Jenkins returned config.xml that is not XML ({error})") from None
    if element.tag != SECRET_TEXT_CLASS:
        raise ConsumerError(
            consumer,
            f"{credential} is a {element.tag}, not Secret text: delete it or choose another credential_id",
            retryable=False,
        )
    return element


def with_new_secret(current: str, key: str, *, consumer: str, credential: str) -> bytes:
    """The credential as Jenkins returned it (id, scope, description, plugin version), with the new secret.

    The old secret comes back encrypted (``{AQAAAB...}``) or as ``<secret-redacted/>``; both are replaced.
    """
    element = secret_text_element(current, consumer=consumer, credential=credential)
    secret = element.find("secret")
    if secret is None:
        secret = ET.SubElement(element, "secret")
    tail = secret.tail
    secret.clear()
    secret.text, secret.tail = key, tail
    return ET.tostring(element, encoding="utf-8")
