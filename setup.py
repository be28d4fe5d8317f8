"""Package metadata comes from settings.ini (nbdev's single source of truth).

No pkg_resources: it is gone from current setuptools, so requirements are split by hand.
The wheel also carries the notebooks (see `build_py` below).
"""
from configparser import ConfigParser
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py

config = ConfigParser(delimiters=["="])
config.read(Path(__file__).with_name("settings.ini"), encoding="utf-8")
cfg = config["DEFAULT"]

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
statuses = ["Planning", "Pre-Alpha", "Alpha", "Beta", "Production/Stable", "Mature", "Inactive"]
lic = licenses[cfg["license"]]


def requirements(key):
    return cfg.get(key, "").split()


# What the wheel carries besides the modules, under <lib>/nbs/ (settings.ini under <lib>/, kaggle/image-*.txt under <lib>/_kit/): the pipeline notebooks
# `abovqa demo|run|kaggle build` execute, and what `abovqa docs` renders (every notebook, the sidebar, styles).
NOTEBOOK_FILES = ["*.ipynb", "pipeline/*.ipynb", "*.yml", "*.css"]


class BuildPyWithNotebooks(build_py):
    "Copy the notebooks into the built package: `pip install abovqa-*.whl` then works from an empty folder."

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout's nbs/ itself
            return
        root = Path(__file__).resolve().parent
        nbs, package = root / cfg["nbs_path"], Path(self.build_lib) / cfg["lib_path"]
        files = sorted({f for pattern in NOTEBOOK_FILES for f in nbs.glob(pattern) if f.is_file()})
        if not any(f.parent.name == "pipeline" for f in files):
            raise RuntimeError(f"no pipeline notebooks under {nbs}: the wheel would be useless")
        for f in files:
            target = package / "nbs" / f.relative_to(nbs)
            self.mkpath(str(target.parent))
            self.copy_file(str(f), str(target))
        self.copy_file(str(root / "settings.ini"), str(package / "settings.ini"))  # nbdev's config, for `abovqa docs`
        for f in sorted((root / "kaggle").glob("image-*.txt")):  # what Kaggle's image has: `abovqa kaggle build` reads it
            self.mkpath(str(package / "_kit" / "kaggle"))
            self.copy_file(str(f), str(package / "_kit" / "kaggle" / f.name))


setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license=lic[0],
    author=cfg["author"],
    author_email=cfg["author_email"],
    url=cfg["git_url"],
    keywords=cfg["keywords"].split(),
    classifiers=[
        f"Development Status :: {cfg['status']} - {statuses[int(cfg['status'])]}",
        f"Intended Audience :: {cfg['audience']}",
        f"License :: {lic[1]}",
        f"Natural Language :: {cfg['language']}",
        "Programming Language :: Python :: 3",
    ],
    python_requires=f">={cfg['min_python']}",
    packages=setuptools.find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    include_package_data=True,
    install_requires=requirements("requirements"),
    extras_require={"dev": requirements("dev_requirements"), "gpu": requirements("gpu_requirements")},
    entry_points={
        "console_scripts": cfg["console_scripts"].split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
    cmdclass={"build_py": BuildPyWithNotebooks},
)
