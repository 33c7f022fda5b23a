"""Offline WordNet look-ups (synonyms, antonyms) for the pretraining text, from a local NLTK data folder.

Nothing is ever downloaded (the published scripts called the NLTK downloader at start-up). NLTK is imported
only when a folder is given, so the rest of the framework (and `no-wordnet` mode) runs without it.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from engine.errors import DataError

WORDNET_HINT = (
    "put the NLTK 'wordnet' corpus there as corpora/wordnet/ (unzipped, holding index.noun, data.noun, ...) "
    "or corpora/wordnet.zip, e.g. by running `python -m nltk.downloader -d {folder} wordnet` on a machine "
    "with network access and copying the folder; or run without WordNet (no wordnet_path): antonym "
    "replacement then falls back to random tokens and synonym swapping is skipped"
)


class Lexicon(Protocol):
    """What the pretraining text builder needs from WordNet."""

    def synonyms(self, word: str) -> list[str]: ...
    def antonyms(self, word: str) -> list[str]: ...


class WordNetLexicon:
    """Synonyms and antonyms from an NLTK `WordNetCorpusReader`, memoised per word."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self._synonyms: dict[str, list[str]] = {}
        self._antonyms: dict[str, list[str]] = {}

    def synonyms(self, word: str) -> list[str]:
        """Lemma names of every synset of `word` (other than the word itself), first-seen order."""
        if word not in self._synonyms:
            names: dict[str, None] = {}
            for synset in self.reader.synsets(word):
                for lemma in synset.lemmas():
                    if lemma.name() != word:
                        names[lemma.name()] = None
            self._synonyms[word] = list(names)
        return self._synonyms[word]

    def antonyms(self, word: str) -> list[str]:
        """Lemma names of the antonyms of every lemma of every synset of `word`, first-seen order."""
        if word not in self._antonyms:
            names: dict[str, None] = {}
            for synset in self.reader.synsets(word):
                for lemma in synset.lemmas():
                    for antonym in lemma.antonyms():
                        names[antonym.name()] = None
            self._antonyms[word] = list(names)
        return self._antonyms[word]


def _wordnet_root(folder: Path, nltk_data: Any) -> Any:
    """Locate the wordnet corpus under an NLTK data folder (or the corpus folder itself)."""
    if (folder / "index.noun").is_file():
        return nltk_data.FileSystemPathPointer(str(folder))
    try:
        return nltk_data.find("corpora/wordnet", paths=[str(folder)])  # also finds corpora/wordnet.zip
    except LookupError:
        raise DataError(f"WordNet not found in {folder}: {WORDNET_HINT.format(folder=folder)}") from None


@cache
def load_wordnet(folder: str) -> WordNetLexicon:
    """WordNet from a local NLTK data folder; clear errors if NLTK or the corpus is missing (cached per folder)."""
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"WordNet folder does not exist: {path}; {WORDNET_HINT.format(folder=path)}")
    try:
        import nltk.data as nltk_data
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        raise DataError(
            f"wordnet_path={path} needs the NLTK package, which is not installed: `pip install nltk` "
            "(or run without wordnet_path)"
        ) from None
    folder_text = str(path.resolve())
    if folder_text not in nltk_data.path:
        nltk_data.path.insert(0, folder_text)  # recent NLTK reads corpora only under its data path
    root = _wordnet_root(path.resolve(), nltk_data)
    try:
        with warnings.catch_warnings():  # the multilingual (OMW) extension is not needed
            warnings.filterwarnings("ignore", message="The multilingual functions")
            reader = WordNetCorpusReader(root, None)
    except (OSError, LookupError) as exc:
        raise DataError(f"cannot read WordNet from {root}: {exc}; {WORDNET_HINT.format(folder=path)}") from None
    return WordNetLexicon(reader)
