"""`data_prep.convert --format textbook_clips` against the original's Idefics2 reader: the document string the
original builds (`training_idefics/training/training.py` `__getitem__`, transcribed below with its file opening
kept) equals the converted record's pieces joined with "" (images as `<image>`); unopenable keyframes lose their
`Image:` label as in the original, and are counted."""
import json

from PIL import Image

from data_prep import convert as convert_mod
from test_data_convert import KEYFRAMES, _records, _skips, images_root  # noqa: F401 (fixture)


def original_text(sample: dict, root, add_ocr: bool = False) -> tuple[str, int]:
    """The original's `__getitem__` (bos '<s>', image token '<image>', end_video_token '\\n'): (text, #images)."""
    image_token, end_video_token, bos_token = "<image>", "\n", "<s>"
    text_one_instance, n_images = "" + bos_token, 0
    for clip in sample["conversations"]:
        current_prompt = ""
        vid = clip["vid"]
        if vid == "End of a Video":
            current_prompt = current_prompt + end_video_token + bos_token
            continue
        if clip.get("keyframe_ssim"):
            for image_file in clip["keyframe_ssim"]:
                try:
                    Image.open(root / image_file).load()
                    n_images += 1
                    current_prompt = current_prompt + "Image:" + image_token
                    if vid == "image_text_pair":
                        current_prompt = current_prompt + end_video_token + bos_token
                except Exception:  # noqa: BLE001 - as the original's bare except
                    continue
        ocr = "\nWe can see these words from the image by OCR: " + clip["ocr_qwen2_vl_72b"] \
            if clip.get("ocr_qwen2_vl_72b") else ""
        if clip.get("refined_asr"):
            asr = "\n" + clip.get("refined_asr")
        elif clip.get("asr"):
            asr = "\n" + clip.get("asr")
        else:
            asr = ""
        ocr, asr = ocr.replace(image_token, "image"), asr.replace(image_token, "image")
        current_prompt = current_prompt + ocr + asr if add_ocr else current_prompt + asr
        text_one_instance = text_one_instance + current_prompt
    return text_one_instance, n_images


SAMPLES = [
    {"conversations": [
        {"vid": "v1", "keyframe_ssim": [KEYFRAMES[0], KEYFRAMES[1]], "refined_asr": "we add <image> terms",
         "asr": "raw asr", "ocr_qwen2_vl_72b": "x = 1"},
        {"vid": "v1", "keyframe_ssim": [], "asr": "only asr here"},
        {"vid": "End of a Video"},
        {"vid": "v2", "keyframe_ssim": ["broken.jpg", KEYFRAMES[2]], "asr": "second video"},
        {"vid": "image_text_pair", "keyframe_ssim": [KEYFRAMES[1]], "refined_asr": "a caption"},
    ], "token_num": 321},
    {"conversations": [{"vid": "v3", "keyframe_ssim": ["missing/none.jpg"], "asr": "no image survives"}],
     "token_num": 5},
]


def test_textbook_clips_records_rebuild_the_originals_string(tmp_path, images_root):  # noqa: F811
    src = tmp_path / "clips.json"
    src.write_text(json.dumps(SAMPLES))
    for add_ocr, extra in ((False, []), (True, ["--text-field", "text_ocr_list"])):
        out = tmp_path / f"out{int(add_ocr)}"
        assert convert_mod.main(["--format", "textbook_clips", "--input", str(src), "--images", str(images_root),
                                 "--out", str(out), "--workers", "1", *extra]) == 0
        _, records = _records(out)
        assert len(records) == 1  # the second sample has no readable image
        doc = records[0]
        want, n_images = original_text(SAMPLES[0], images_root, add_ocr)
        assert "".join("<image>" if t is None else t for t in doc["texts"]) == want
        assert sum(t is None for t in doc["texts"]) == n_images == 4
        assert "<image> terms" not in want and "image terms" in want and want.startswith("<s>Image:<image>Image:")
        reasons = sorted(s["reason"] for s in _skips(out))
        assert reasons == ["missing_file", "no_images", "undecodable_image"]
