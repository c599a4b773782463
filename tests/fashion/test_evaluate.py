"""Evaluation: a retrieved caption counts when it fits the image."""


def test_retrieval_counts_captions_that_fit_the_image(data):
    from jestkit.fashion.evaluate import attribute_masks, consistent, level_masks

    test = data.test
    cap, img = attribute_masks(test.captions), level_masks(test.levels)
    # every clean test caption fits its own image ...
    assert bool(consistent(cap, test.labels, img, test.labels).all())
    # ... and a caption naming another class, or a wrong attribute word, does not
    other = (test.labels + 1) % 10
    assert not bool(consistent(cap, other, img, test.labels).any())
    names_some = cap > 0
    flipped = img ^ (img & -img)  # drop the image's lowest true word
    wrong = consistent(cap, test.labels, flipped, test.labels)
    assert wrong[names_some].float().mean() < 1.0
