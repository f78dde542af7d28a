"""The tfds path end to end without TensorFlow: a tiny builder prepared as ArrayRecord, read by `make_source`."""

import io

import numpy as np
import pytest

from mmjax.data import sources

tfds = pytest.importorskip("tensorflow_datasets")


class TinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6)}

    def _generate_examples(self, n):
        from PIL import Image

        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(buf, format="PNG")
            yield i, {"image": buf.getvalue(), "label": i % 3}


def test_prepared_tfds_dataset_reads_through_make_source(tmp_path):
    TinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    source = sources.make_source({"name": "tfds", "dataset": "tiny_images", "split": "train",
                                  "data_dir": str(tmp_path)})
    assert len(source) == 6
    records = sorted((int(source[i]["label"]), int(source[i]["image"][0, 0, 0])) for i in range(6))
    assert records == sorted((i % 3, 40 * i) for i in range(6))
