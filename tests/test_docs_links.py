"""Every relative link and image in README.md and docs/ names a file that exists."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def broken_links():
    files = ["README.md"] + sorted(glob.glob("docs/**/*.md", root_dir=ROOT, recursive=True))
    bad = []
    for md in files:
        text = open(os.path.join(ROOT, md)).read()
        for target in LINK.findall(text):
            path = target.split("#")[0]
            if not path or re.match(r"[a-z]+:", path):  # an anchor in the same file, or a URL
                continue
            if not os.path.exists(os.path.join(ROOT, os.path.dirname(md), path)):
                bad.append(f"{md}: {target}")
    return bad


def test_no_broken_links():
    assert broken_links() == []
