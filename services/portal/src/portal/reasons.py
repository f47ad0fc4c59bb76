"""What the page tells a subscriber for each category: why, and what to do."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Explanation:
    headline: str
    why: str
    todo: tuple[str, ...]


_CLEAN_UP = (
    "Install antivirus software and run a full scan of every computer in your home.",
    "Install all pending updates for your operating system and browser.",
    "Change the passwords of your e-mail and router once the computer is clean.",
)

EXPLANATIONS: dict[str, Explanation] = {
    "scan": Explanation(
        "A device in your home is scanning other computers",
        "Our network saw a device on your connection probing many other computers. "
        "That is what viruses and worms do to spread.",
        _CLEAN_UP,
    ),
    "malware": Explanation(
        "A device in your home appears to be infected",
        "A device on your connection talked to servers that control infected computers.",
        _CLEAN_UP,
    ),
    "spam": Explanation(
        "A device in your home is sending spam",
        "A device on your connection sent far more e-mail than a person does, typically because a virus "
        "uses it to send spam.",
        (*_CLEAN_UP, "If you run a mail server, contact us to move to a business plan."),
    ),
    "dos": Explanation(
        "A device in your home is attacking other computers",
        "A device on your connection flooded another network with traffic.",
        _CLEAN_UP,
    ),
    "bruteforce": Explanation(
        "A device in your home is trying to break into other computers",
        "A device on your connection tried many passwords against other computers.",
        _CLEAN_UP,
    ),
    "copyright": Explanation(
        "We received a copyright complaint about your connection",
        "A rights holder reported that a device on your connection shared copyrighted material.",
        ("Remove file-sharing software you do not use.", "Make sure your Wi-Fi is protected by a password."),
    ),
    "other": Explanation(
        "Your connection was restricted",
        "Our abuse team restricted your connection because of a problem reported with it.",
        _CLEAN_UP,
    ),
}


def explain(category: str) -> Explanation:
    return EXPLANATIONS.get(category, EXPLANATIONS["other"])
