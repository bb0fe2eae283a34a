"""heartseg.data: the preprocessing cache is reused while its inputs hold, and only then;
each channel is normalised on its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

from heartseg.data.cases import MSD, NNUNET_V2
from heartseg.data.dataset import read_dataset
from heartseg.data.synthetic import write_synthetic_dataset
from heartseg.errors import UserError
from heartseg.preprocessing import cache as preprocessing_cache
from heartseg.preprocessing.cache import preprocess_case, preprocess_cases
from heartseg.preprocessing.preprocessing import Preprocessing


def cached_files(cache):
    return sorted(path.name for path in cache.glob('*.pt'))


def test_a_cached_case_is_reused_and_a_changed_file_or_spacing_is_preprocessed_again(
    small_dataset, tmp_path, monkeypatch
):
    spec = read_dataset(small_dataset)
    case, cache = spec.cases[0], tmp_path / 'cache'
    coarse = Preprocessing((3.0, 3.0, 3.0))
    first = preprocess_case(case, spec, coarse, cache)
    assert len(cached_files(cache)) == 1

    def must_not_load(*_):
        raise AssertionError('a cache hit must not read the NIfTI files again')

    with monkeypatch.context() as patched:
        patched.setattr(preprocessing_cache, 'load_case', must_not_load)
        again = preprocess_case(case, spec, coarse, cache)
    assert np.array_equal(again['label'].numpy(), first['label'].numpy())

    label = nib.load(case.label)
    edited = np.asarray(label.dataobj).copy()
    edited[:] = 0  # the label changes on disk: the cached volume must not be used
    nib.save(nib.Nifti1Image(edited, label.affine), case.label)
    os.utime(case.label, ns=(1, 1))
    assert preprocess_case(case, spec, coarse, cache)['label'].numpy().sum() == 0
    assert first['label'].numpy().sum() > 0
    assert len(cached_files(cache)) == 2

    finer = preprocess_case(case, spec, Preprocessing((1.5, 1.5, 3.0)), cache)
    assert finer['image'].spatial_shape != first['image'].spatial_shape
    assert len(cached_files(cache)) == 3


def test_a_label_edited_in_place_with_its_size_and_time_kept_is_preprocessed_again(small_dataset, tmp_path):
    """An uncompressed .nii edited in place keeps its size,
    and cp -p or rsync -a restore its time: the content decides."""
    spec = read_dataset(small_dataset)
    case, cache, preprocessing = spec.cases[0], tmp_path / 'cache', Preprocessing((3.0, 3.0, 3.0))
    label = nib.load(case.label)
    plain = case.label.with_name(case.label.name.replace('.nii.gz', '.nii'))
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), label.affine), plain)
    listing = json.loads((small_dataset / 'dataset.json').read_text())
    listing['training'][0]['label'] = f'./labelsTr/{plain.name}'
    (small_dataset / 'dataset.json').write_text(json.dumps(listing))
    spec = read_dataset(small_dataset)
    case = spec.cases[0]
    before = preprocess_case(case, spec, preprocessing, cache)['label'].numpy()
    stat = case.label.stat()
    edited = np.asarray(nib.load(case.label).dataobj).copy()
    edited[edited == 1] = 0
    nib.save(nib.Nifti1Image(edited, label.affine), case.label)
    os.utime(case.label, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert case.label.stat().st_size == stat.st_size and case.label.stat().st_mtime_ns == stat.st_mtime_ns
    after = preprocess_case(case, spec, preprocessing, cache)['label'].numpy()
    assert before.sum() > 0 and after.sum() == 0, 'the stale volume was served'


def test_the_cache_key_changes_with_the_resampling_libraries(small_dataset, monkeypatch):
    spec = read_dataset(small_dataset)
    key = preprocessing_cache._cache_key(spec.cases[0], Preprocessing((3.0, 3.0, 3.0)))
    monkeypatch.setattr(preprocessing_cache.tio, '__version__', '0.0.0')
    assert preprocessing_cache._cache_key(spec.cases[0], Preprocessing((3.0, 3.0, 3.0))) != key


@pytest.mark.parametrize(
    'damage', [lambda path: path.write_bytes(path.read_bytes()[:100]), lambda path: path.write_bytes(b'')]
)
def test_a_damaged_cache_entry_is_made_again_with_a_warning(small_dataset, tmp_path, capsys, damage):
    spec = read_dataset(small_dataset)
    case, cache, preprocessing = spec.cases[0], tmp_path / 'cache', Preprocessing((3.0, 3.0, 3.0))
    first = preprocess_case(case, spec, preprocessing, cache)
    (entry,) = cache.glob('*.pt')
    damage(entry)
    again = preprocess_case(case, spec, preprocessing, cache)
    assert torch.equal(again['image'].data, first['image'].data)
    assert f'warning: {entry}: unreadable cache entry' in capsys.readouterr().err
    assert torch.equal(preprocess_case(case, spec, preprocessing, cache)['image'].data, first['image'].data)
    assert 'unreadable' not in capsys.readouterr().err, 'the damaged entry must have been replaced'


def test_the_cache_key_changes_with_the_preprocessing_version(small_dataset, monkeypatch):
    spec = read_dataset(small_dataset)
    preprocessing = Preprocessing((3.0, 3.0, 3.0))
    before = preprocessing_cache._cache_key(spec.cases[0], preprocessing)
    monkeypatch.setattr(preprocessing_cache, 'PREPROCESSING_VERSION', preprocessing_cache.PREPROCESSING_VERSION + 1)
    assert preprocessing_cache._cache_key(spec.cases[0], preprocessing) != before


def test_a_cached_case_is_still_checked_against_the_labels_dataset_json_declares_now(
    small_dataset, tmp_path, monkeypatch
):
    spec = read_dataset(small_dataset)
    case, cache, preprocessing = spec.cases[0], tmp_path / 'cache', Preprocessing((3.0, 3.0, 3.0))
    preprocess_case(case, spec, preprocessing, cache)
    content = json.loads((small_dataset / 'dataset.json').read_text())
    content['labels'] = {'0': 'background'}  # label 1 is no longer declared
    (small_dataset / 'dataset.json').write_text(json.dumps(content))
    monkeypatch.setattr(
        preprocessing_cache, 'load_case', lambda *_: pytest.fail('the check must not need the voxels again')
    )
    with pytest.raises(UserError, match=r'label values \[1\] are not declared'):
        preprocess_case(case, read_dataset(small_dataset), preprocessing, cache)


def test_a_case_without_foreground_is_named_in_a_warning(small_dataset, tmp_path, capsys):
    spec = read_dataset(small_dataset)
    label = nib.load(spec.cases[2].label)
    nib.save(nib.Nifti1Image(np.zeros(label.shape, np.uint8), label.affine), spec.cases[2].label)
    subjects = preprocess_cases(spec.cases[:3], spec, Preprocessing((3.0, 3.0, 3.0)), tmp_path / 'cache')
    assert len(subjects) == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning:')]
    assert warnings == [
        f'warning: case {spec.cases[2].case_id}: {spec.cases[2].label}: '
        'label map has no foreground voxels; it trains as background only'
    ]


def test_each_channel_is_z_scored_on_its_own():
    """Two modalities a hundredfold apart in scale: pooled statistics would leave the first near a constant."""
    rng = np.random.default_rng(0)
    channels = np.stack([rng.normal(10, 2, (12, 12, 12)), rng.normal(1000, 200, (12, 12, 12))]).astype(np.float32)
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(channels), affine=np.eye(4)),
        label=tio.LabelMap(tensor=torch.zeros(1, 12, 12, 12, dtype=torch.uint8), affine=np.eye(4)),
    )
    normalised = Preprocessing((1.0, 1.0, 1.0))(subject)['image'].data
    assert torch.allclose(normalised.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(normalised.std(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)
    assert torch.equal(subject['label'].data, Preprocessing((1.0, 1.0, 1.0))(subject)['label'].data)


@pytest.mark.parametrize('target_spacing', [1.25, 1.0])  # 2x, as at the CPU plan, and a non-integer factor
def test_a_resampled_label_keeps_its_image_s_centre_of_mass(target_spacing):
    """Nearest-neighbour labels move by a quarter of a coarse voxel at 2x;
    one-hot linear + arg max stays with the image."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (48, 44, 40)), indexing='ij')).astype(float)
    radii, centre = np.array([11.0, 8.0, 9.5]), np.array([22.3, 20.6, 19.1])
    mask = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    affine = np.diag([0.625, 0.625, 0.625, 1.0])
    affine[:3, 3] = (-61.2, 17.9, 33.4)
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(mask[None].astype(np.float32)), affine=affine),
        label=tio.LabelMap(tensor=torch.from_numpy(mask[None].astype(np.uint8)), affine=affine),
    )
    resampled = Preprocessing((target_spacing,) * 3)(subject)
    image = resampled['image'].data[0].double()
    weights = (image - image.min()) / (
        image.max() - image.min()
    )  # undoes the z-score, which is affine in the intensities
    indices = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in image.shape), indexing='ij'))
    image_centre = (indices * weights).sum(dim=(1, 2, 3)) / weights.sum()
    label = resampled['label'].data[0] == 1
    label_centre = indices[:, label].mean(dim=1)
    error = (image_centre - label_centre).abs().max()
    assert error < 0.05, (
        f"label centre {label_centre.tolist()} is {error:.3f} voxel from its image's {image_centre.tolist()}"
    )


@pytest.fixture
def v2_dataset(tmp_path) -> Path:
    return write_synthetic_dataset(
        tmp_path / 'Dataset002_Heart',
        num_cases=3,
        shape=(40, 40, 20),
        spacing=(1.5, 1.5, 3.0),
        structures=3,
        layout='nnunet_v2',
        test_cases=1,
    )


def test_an_nnunet_v2_raw_folder_is_read_as_it_is(v2_dataset):
    spec = read_dataset(v2_dataset)
    assert spec.layout == NNUNET_V2
    assert [c.case_id for c in spec.cases] == ['synthetic_000', 'synthetic_001', 'synthetic_002']
    assert spec.cases[0].image == v2_dataset / 'imagesTr' / 'synthetic_000_0000.nii.gz'
    assert spec.cases[0].label == v2_dataset / 'labelsTr' / 'synthetic_000.nii.gz'
    assert spec.labels == {0: 'background', 1: 'left atrium', 2: 'atrial wall', 3: 'neighbouring chamber'}
    assert spec.modalities == {0: 'MRI'} and not spec.regions
    assert [c.case_id for c in spec.test_cases] == ['synthetic_003']
    subject = preprocess_case(spec.cases[0], spec, Preprocessing((3.0, 3.0, 3.0)), v2_dataset.parent / 'cache')
    assert set(torch.unique(subject['label'].data).tolist()) == {0, 1, 2, 3}, 'the three structures survive the reading'


def test_an_msd_folder_still_reads_as_before(small_dataset):
    spec = read_dataset(small_dataset)
    assert (
        spec.layout == MSD
        and spec.cases[0].image.name == 'synthetic_000.nii.gz'
        and spec.labels == {0: 'background', 1: 'left atrium'}
    )


def test_an_msd_subset_whose_files_link_to_another_dataset_is_read(small_dataset, tmp_path):
    """A subset made of links (as benchmarks.holdout makes) is inside its folder by path, wherever the links point."""
    subset = tmp_path / 'Subset'
    for folder in ('imagesTr', 'labelsTr'):
        (subset / folder).mkdir(parents=True)
        for source in sorted((small_dataset / folder).glob('*.nii.gz'))[:3]:
            os.symlink(source, subset / folder / source.name)
    listing = json.loads((small_dataset / 'dataset.json').read_text())
    listing['training'] = listing['training'][:3]
    (subset / 'dataset.json').write_text(json.dumps(listing))
    spec = read_dataset(subset)
    assert [case.image.parent for case in spec.cases] == [subset.resolve() / 'imagesTr'] * 3
    assert all(case.image.resolve().is_relative_to(small_dataset.resolve()) for case in spec.cases)


def spellings(folder: Path, monkeypatch) -> dict[str, Path]:
    """Honest spellings of ``folder`` (a dataset in pytest's tmp_path), made real on disk where they need to be."""
    base = folder.parent
    (base / 'elsewhere').mkdir(exist_ok=True)
    (base / 'link').symlink_to(folder, target_is_directory=True)
    monkeypatch.chdir(base / 'elsewhere')
    monkeypatch.setenv('HOME', str(base))
    return {
        'relative with ..': Path('..') / folder.name,
        'absolute with ..': base / 'elsewhere' / '..' / folder.name,
        'symlinked folder': base / 'link',
        'relative through a symlink and ..': Path('..') / 'link' / '..' / folder.name,
        'home (~)': Path('~') / folder.name,
    }


@pytest.mark.parametrize('layout', ['msd', 'nnunet_v2'])
def test_every_honest_spelling_of_a_dataset_folder_reads_the_same_files(tmp_path, monkeypatch, layout):
    folder = write_synthetic_dataset(tmp_path / 'Data', num_cases=2, shape=(12, 12, 6), layout=layout, test_cases=1)
    expected = read_dataset(folder)
    for name, spelling in spellings(folder, monkeypatch).items():
        spec = read_dataset(spelling)
        files = [(case.image, case.label) for case in spec.cases] + [(case.image,) for case in spec.test_cases]
        wanted = [(case.image, case.label) for case in expected.cases] + [(case.image,) for case in expected.test_cases]
        assert len(files) == len(wanted), name
        for paths, expected_paths in zip(files, wanted):
            assert all(path.samefile(other) for path, other in zip(paths, expected_paths)), name


@pytest.mark.parametrize(
    'entry, key',
    [
        ('../../x.nii.gz', 'image'),
        ('./imagesTr/../../Other/imagesTr/synthetic_000.nii.gz', 'image'),
        ('../Other/labelsTr/synthetic_000.nii.gz', 'label'),
        ('/etc/passwd', 'label'),
    ],
)
def test_an_entry_outside_the_folder_is_refused_whatever_the_folder_is_called(tmp_path, monkeypatch, entry, key):
    """An entry that leaves the folder is refused, naming dataset.json, through every spelling of the folder."""
    other = write_synthetic_dataset(tmp_path / 'Other', num_cases=1, shape=(12, 12, 6))
    folder = write_synthetic_dataset(tmp_path / 'Data', num_cases=1, shape=(12, 12, 6))
    listing = json.loads((folder / 'dataset.json').read_text())
    listing['training'][0][key] = entry
    (folder / 'dataset.json').write_text(json.dumps(listing))
    assert (other / 'labelsTr' / 'synthetic_000.nii.gz').is_file(), (
        'the escape target exists, so only the check stops it'
    )
    for name, spelling in spellings(folder, monkeypatch).items():
        with pytest.raises(UserError) as error:
            read_dataset(spelling)
        assert Path(error.value.where).name == 'dataset.json', name
        assert 'escapes the dataset folder' in str(error.value) or 'absolute path' in str(error.value), name


def test_nnunet_v2_regions_are_read_with_their_paint_order(v2_dataset):
    content = json.loads((v2_dataset / 'dataset.json').read_text())
    content['labels'] = {'background': 0, 'whole heart': [1, 2, 3], 'atrium and wall': [1, 2], 'atrium': 1}
    content['regions_class_order'] = [3, 2, 1]
    (v2_dataset / 'dataset.json').write_text(json.dumps(content))
    spec = read_dataset(v2_dataset)
    assert [(r['values'], r['paint']) for r in spec.regions] == [([1, 2, 3], 3), ([1, 2], 2), ([1], 1)]
    assert spec.labels == {0: 'background', 1: 'atrium', 2: 'atrium and wall', 3: 'whole heart'}


@pytest.mark.parametrize(
    'change,message',
    [
        (lambda c: c.pop('numTraining'), 'missing required key "numTraining"'),
        (lambda c: c.update(numTraining=5), '"numTraining" is 5 but'),
        (lambda c: c.update(file_ending='.png'), '"file_ending" \'.png\' is not supported'),
        (lambda c: c.update(labels={'background': 0, 'atrium': 'one'}), '"labels" entry \'atrium\' must be an integer'),
        (lambda c: c.update(labels={'atrium': 1}), 'must declare 0 (background)'),
        (
            lambda c: c.update(labels={'background': 0, 'heart': [1, 2], 'atrium': 1}),
            '"regions_class_order" must list one label value per region',
        ),
        (lambda c: c.update(channel_names={'0': 'T1', '1': 'T2'}), 'multi-channel nnU-Net v2 datasets'),
    ],
)
def test_a_bad_nnunet_v2_dataset_json_is_one_line_naming_the_key(v2_dataset, change, message):
    content = json.loads((v2_dataset / 'dataset.json').read_text())
    change(content)
    (v2_dataset / 'dataset.json').write_text(json.dumps(content))
    with pytest.raises(UserError) as raised:
        read_dataset(v2_dataset)
    assert message in str(raised.value) and 'dataset.json' in str(raised.value) and '\n' not in str(raised.value)


def test_an_nnunet_v2_case_without_its_label_file_is_named(v2_dataset):
    (v2_dataset / 'labelsTr' / 'synthetic_001.nii.gz').unlink()
    spec = read_dataset(v2_dataset)
    with pytest.raises(UserError, match='synthetic_001.nii.gz'):
        preprocess_case(spec.cases[1], spec, Preprocessing((3.0, 3.0, 3.0)), v2_dataset.parent / 'cache')
